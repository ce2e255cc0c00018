"""A study file (configs/studies/*.yaml) as dataclasses, and the run config of each arm, profile and seed.

The file is parsed by draccus like a run config, so an unknown key or a wrongly typed value fails with one
line naming it; every arm's run config is then built and checked before anything trains (``plan``).

An arm's config is its preset with, in order: the study's ``shared`` overrides, the profile's, the arm's
own, the arm's for that profile, the command line's, and finally the seed and run directory the runner
sets. Overrides are ``"section.field=value"`` strings, as the dotted command-line flags without ``--``.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import draccus
from draccus.utils import DraccusException

from chimera_jax.config import CONFIG_DIR, ConfigError, RunConfig, load_config, one_line, replace

STUDY_DIR = CONFIG_DIR / "studies"
PROFILES = ("smoke", "quick", "full")
Plot = Literal["curves", "params", "wall", "experts", "gates", "depth"]


@dataclass
class Arm:
    name: str  # also the run directory's name: OUT/<name>/seed<k>
    preset: str  # configs/<preset>.yaml
    overrides: list[str] = field(default_factory=list)  # what makes this arm: "model.moe.top_k=1"
    profiles: dict[str, list[str]] = field(default_factory=dict)  # extra overrides for one profile


@dataclass
class Profile:
    seeds: int = 1  # seeds 0 .. seeds-1; --seeds N replaces it
    overrides: list[str] = field(default_factory=list)  # shape and budget for every arm


@dataclass
class Evaluation:
    """What every run is scored on after training, besides the loop's own validation."""

    split: str = "validation"  # split of the extra corpora (and of the HF baselines)
    max_windows: int | None = 64  # non-overlapping windows of the run's seq_len scored per corpus
    corpora: list[str] = field(default_factory=list)  # every run (and HF baseline) scored on each
    depths: list[float] = field(default_factory=list)  # time-indexed arms re-run at round(f * n_layers) layers
    every_depth_to: float | None = None  # and at every depth 1 .. round(f * n_layers) (3.0: up to 3L)
    hf_baselines: list[str] = field(default_factory=list)  # HF models (bridge), scored on each of corpora


@dataclass
class Study:
    name: str
    baseline: str  # the arm every other is compared with
    arms: list[Arm]
    description: str = ""  # the question and the protocol, in words: the top of report.md
    shared: list[str] = field(default_factory=list)  # overrides for every arm in every profile
    profiles: dict[str, Profile] = field(default_factory=dict)
    evaluation: Evaluation = field(default_factory=Evaluation)
    plots: list[Plot] = field(default_factory=lambda: ["curves", "params", "wall"])

    def __post_init__(self) -> None:
        names = [arm.name for arm in self.arms]
        if not names:
            raise ConfigError("arms: a study needs at least one arm")
        if len(set(names)) != len(names):
            raise ConfigError(f"arms: names must be unique, got {names}")
        if self.baseline not in names:
            raise ConfigError(f"baseline: {self.baseline!r} is not one of the arms {names}")
        unknown = set(self.profiles) | {p for arm in self.arms for p in arm.profiles}
        if unknown - set(PROFILES):
            raise ConfigError(f"profiles: unknown profile(s) {sorted(unknown - set(PROFILES))}; known: {PROFILES}")
        for where, overrides in self._overrides():
            for o in overrides:
                if "=" not in o or o.startswith("-"):
                    raise ConfigError(f"{where}: override {o!r} must read section.field=value")
        if self.evaluation.every_depth_to is not None and self.evaluation.every_depth_to <= 0:
            raise ConfigError(f"evaluation.every_depth_to must be > 0, got {self.evaluation.every_depth_to}")
        if any(f <= 0 for f in self.evaluation.depths):
            raise ConfigError(f"evaluation.depths: factors of n_layers must be > 0, got {self.evaluation.depths}")

    def _overrides(self):
        yield "shared", self.shared
        for name, profile in self.profiles.items():
            yield f"profiles.{name}.overrides", profile.overrides
        for arm in self.arms:
            yield f"arms.{arm.name}.overrides", arm.overrides
            for name, overrides in arm.profiles.items():
                yield f"arms.{arm.name}.profiles.{name}", overrides

    def profile(self, name: str) -> Profile:
        return self.profiles.get(name, Profile())


def study_path(name: str) -> Path:
    """A study file: a path, or a name in configs/studies/."""
    path = Path(name)
    if path.suffix in (".yaml", ".yml"):
        if not path.exists():
            raise ConfigError(f"study file not found: {path}")
        return path
    path = STUDY_DIR / f"{name}.yaml"
    if not path.exists():
        known = ", ".join(sorted(p.stem for p in STUDY_DIR.glob("*.yaml")))
        raise ConfigError(f"unknown study {name!r}: no {path}. Known studies: {known}")
    return path


def load_study(name: str) -> Study:
    """Parse a study file; any error is one ``ConfigError`` line naming the key."""
    path = study_path(name)
    try:
        return draccus.load(Study, io.StringIO(path.read_text()))
    except (DraccusException, ValueError, TypeError) as err:
        raise ConfigError(f"{path.name}: {one_line(err)}") from None


def flags(overrides: list[str]) -> list[str]:
    """``["model.d_model=64"]`` -> ``["--model.d_model=64"]``, draccus's form."""
    return [f"--{o}" for o in overrides]


@dataclass(frozen=True)
class Run:
    """One arm at one seed: its config (run directory included) and where its record goes."""

    arm: str
    seed: int
    config: RunConfig

    @property
    def run_dir(self) -> Path:
        return self.config.run_dir


def arm_config(study: Study, arm: Arm, profile: str, seed: int, out: Path, cli: list[str]) -> RunConfig:
    """The arm's run config for ``profile`` and ``seed``, in OUT/<arm>/seed<k>; checked by ``load_config``."""
    from chimera_jax.data import check_corpora

    preset = CONFIG_DIR / f"{arm.preset}.yaml"
    if not preset.exists():
        raise ConfigError(f"arms.{arm.name}.preset: no preset {preset}")
    overrides = [*study.shared, *study.profile(profile).overrides, *arm.overrides, *arm.profiles.get(profile, [])]
    try:
        cfg = load_config(preset, [*flags(overrides), *cli])
        check_corpora(cfg.data)
    except (ConfigError, DraccusException) as err:
        raise ConfigError(f"arms.{arm.name}: {one_line(err)}") from None
    run_dir = out / arm.name / f"seed{seed}"
    return replace(cfg, name=f"{study.name}/{arm.name}", train=replace(cfg.train, seed=seed, run_dir=str(run_dir)))


def plan(study: Study, profile: str, seeds: int | None, out: Path, cli: list[str]) -> list[Run]:
    """Every run of the study, arms in file order and seeds within each; every config checked first."""
    if profile not in PROFILES:
        raise ConfigError(f"profile: {profile!r} is not one of {PROFILES}")
    n = seeds if seeds is not None else study.profile(profile).seeds
    if n < 1:
        raise ConfigError(f"seeds: {n} must be >= 1")
    return [Run(arm.name, k, arm_config(study, arm, profile, k, out, cli)) for arm in study.arms for k in range(n)]
