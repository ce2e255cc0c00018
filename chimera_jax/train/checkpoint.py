"""Orbax checkpoints of a TrainerState plus the run's config and data position.

Each step holds three items: ``model`` (the model's arrays), ``train`` (the optimizer state, step and raw
PRNG key data: what resuming needs besides the weights) and ``meta`` (JSON: the config, the data position).
Evaluation and generation read ``model`` alone, so a checkpoint shipped without ``train`` still loads.
Arrays are saved as ``eqx.filter(tree, eqx.is_array)`` and restored onto an ``eqx.filter_eval_shape``
skeleton of what the current config builds, so nothing in a checkpoint is ever executed: Orbax reads
tensors (tensorstore) and JSON, never pickles.

Arrays split over a mesh are saved split: each process writes the shards it holds. They restore onto the
shardings of the skeleton's arrays (the mesh of the run resuming, which may have other devices, or fewer);
a skeleton of bare shapes (``load_model``) restores onto one device.
"""

from __future__ import annotations

import logging
from pathlib import Path

import equinox as eqx
import jax
import orbax.checkpoint as ocp

from chimera_jax.config import RunConfig, flat_fields, from_yaml, replace, to_yaml
from chimera_jax.errors import UserError
from chimera_jax.models.builder import build_model
from chimera_jax.models.params import is_param
from chimera_jax.models.transformer import Decoder
from chimera_jax.tokenizer import in_run
from chimera_jax.train.state import TrainerState

log = logging.getLogger(__name__)


class CheckpointError(UserError, RuntimeError):
    """A run, step or checkpoint that is not there or cannot be read, or a config it does not fit."""


def _manager(directory: Path, keep: int | None, read_only: bool) -> ocp.CheckpointManager:
    """Read-only: neither the folder created nor leftover temporary checkpoints removed (Orbax's own read_only
    option does the same but warns about each option it overrides)."""
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=not read_only, enable_async_checkpointing=False,
                                           cleanup_tmp_directories=not read_only)
    return ocp.CheckpointManager(directory.resolve(), options=options)


def _train_item(state: TrainerState) -> dict:
    """The part of a state that only resuming needs: everything but the model."""
    return {"opt_state": state.opt_state, "step": state.step, "key": state.key}


class Checkpointer:
    """Save and restore TrainerStates under ``run_dir/checkpoints/<step>``; keeps the last ``keep``.

    ``read_only`` (evaluation, export, loading a fine-tuning source) writes nothing, not even the folder, so a
    mistyped run directory stays a missing one. Use it as a context manager, or ``close`` it: an Orbax manager
    left open raises at interpreter exit ("cannot schedule new futures"), after the command's own error."""

    def __init__(self, run_dir: str | Path, keep: int | None = 3, *, read_only: bool = False):
        self.directory = Path(run_dir) / "checkpoints"
        if read_only and not self.directory.is_dir():
            raise CheckpointError(f"{run_dir} is not a run directory (no checkpoints/ in it)")
        self.manager = _manager(self.directory, keep, read_only)

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def candidates(self, step: int | None = None) -> list[int]:
        """The steps to try, newest first: ``[step]``, or every saved one; a one-line CheckpointError when there is
        no such step, or none yet."""
        steps = self.steps()
        if not steps:
            raise CheckpointError(f"{self.directory.parent} has no checkpoint yet: its training stopped (or is still "
                                  "running) before the first one (train.checkpoint_every)")
        if step is None:
            return steps[::-1]
        if step not in steps:
            raise CheckpointError(f"{self.directory.parent} has no checkpoint at step {step}; its steps: "
                                  f"{', '.join(map(str, steps))}")
        return [step]

    def save(self, state: TrainerState, cfg: RunConfig, extra: dict | None = None) -> int:
        step = int(state.step)
        if step in self.manager.all_steps():  # e.g. a resumed run failing at once: that state is saved
            return step
        meta = {"step": step, "data_step": step, "config": to_yaml(cfg), **(extra or {})}
        self.manager.save(step, args=ocp.args.Composite(
            model=ocp.args.StandardSave(eqx.filter(state.model, eqx.is_array)),
            train=ocp.args.StandardSave(eqx.filter(_train_item(state), eqx.is_array)),
            meta=ocp.args.JsonSave(meta)), force=True)
        self.manager.wait_until_finished()
        return step

    def read_meta(self, step: int) -> dict:
        return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

    def restore(self, skeleton: TrainerState, cfg: RunConfig | None = None,
                step: int | None = None) -> tuple[TrainerState, dict]:
        """Restore the newest readable checkpoint (or ``step``) onto ``skeleton``: ``(state, meta)``.

        A newest checkpoint that cannot be read is skipped with a warning and the one before used.
        A model config that differs from ``cfg.model`` raises CheckpointError naming the fields, and so does
        a checkpoint without its ``train`` item (a model for evaluation only).
        """
        restored, meta = self._restore({"model": skeleton.model, "train": _train_item(skeleton)}, cfg, step)
        return TrainerState(model=restored["model"], **restored["train"]), meta

    def restore_model(self, skeleton: eqx.Module, cfg: RunConfig | None = None,
                      step: int | None = None) -> tuple[eqx.Module, dict]:
        """Like ``restore``, reading the ``model`` item alone onto a model skeleton: ``(model, meta)``."""
        restored, meta = self._restore({"model": skeleton}, cfg, step)
        return restored["model"], meta

    def _restore(self, skeletons: dict, cfg: RunConfig | None, step: int | None) -> tuple[dict, dict]:
        """Restore the items named by ``skeletons`` (concrete or eval_shape trees) from one checkpoint."""
        candidates = self.candidates(step)
        abstract = {name: _restore_targets(tree) for name, tree in skeletons.items()}
        for s in candidates:
            where = self.directory / str(s)
            try:
                meta = self.read_meta(s)
            except Exception as err:  # noqa: BLE001 - any unreadable checkpoint is skipped the same way
                log.warning("checkpoint %d in %s is unreadable (%s); trying an older one", s, self.directory, err)
                continue
            if cfg is not None:
                check_model_config(from_yaml(meta["config"]), cfg, where)
            # Orbax renames a checkpoint into place once all its items are written, so a missing item was
            # removed on purpose (a model kept for evaluation), not lost in a crash: an error, not a fallback.
            missing = [name for name in skeletons if not (where / name).is_dir()]
            if missing:
                raise CheckpointError(f"checkpoint {where} has no {', '.join(missing)} item: it was saved or "
                                      "stripped without it, so it cannot restore a full training state "
                                      "(load_model reads the model alone)")
            try:
                restored = self.manager.restore(s, args=ocp.args.Composite(
                    **{name: ocp.args.StandardRestore(tree) for name, tree in abstract.items()}))
            except Exception as err:  # noqa: BLE001
                log.warning("checkpoint %d in %s is incomplete or corrupt (%s); trying an older one", s,
                            self.directory, err)
                continue
            return {name: eqx.combine(restored[name], tree) for name, tree in skeletons.items()}, meta
        raise CheckpointError(f"no readable checkpoint in {self.directory} (tried steps {candidates})")

    def close(self) -> None:
        self.manager.close()


def _restore_targets(tree):
    """The arrays of ``tree`` as Orbax restore targets: an array where it lies, a bare shape on this process's
    first device (not on the shardings the checkpoint records, whose devices may not exist here)."""
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])

    def target(x):
        if isinstance(x, jax.ShapeDtypeStruct) and x.sharding is None:
            return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device)
        return x

    return jax.tree_util.tree_map(target, eqx.filter(tree, is_param))


# Model fields that change how the model runs, not what it computes or which parameters it has.
EXECUTION_ONLY = frozenset({"scan_unroll", "remat", "ssm.scan", "ssm.chunk"})


def model_changes(saved: RunConfig, current: RunConfig) -> dict[str, tuple]:
    """``{field: (saved, current)}`` for the model fields that differ, execution-only ones aside. A maximum length
    that follows ``data.seq_len`` in both is reported as ``data.seq_len``: the flag the user changed."""
    saved_model, current_model = flat_fields(saved.model), flat_fields(current.model)
    diffs = {f"model.{k}": (saved_model.get(k), current_model.get(k)) for k in saved_model.keys() | current_model.keys()
             if saved_model.get(k) != current_model.get(k) and k not in EXECUTION_ONLY}
    derived = all(cfg.model.max_seq_len == cfg.data.seq_len for cfg in (saved, current))
    if "model.max_seq_len" in diffs and derived:
        diffs["data.seq_len"] = diffs.pop("model.max_seq_len")
    return diffs


def check_model_config(saved: RunConfig, current: RunConfig, where: Path) -> None:
    """A one-line CheckpointError naming each changed field when ``current`` cannot restore ``saved``'s model."""
    diffs = model_changes(saved, current)
    if diffs:
        changes = "; ".join(f"{k}: checkpoint {a!r} vs config {b!r}" for k, (a, b) in sorted(diffs.items()))
        raise CheckpointError(f"checkpoint {where} was trained with a different model config ({changes}): train "
                              "this config in a new run directory (--train.run_dir), or drop the changed flags to "
                              "resume the run")


def load_run_config(run_dir: str | Path, step: int | None = None) -> RunConfig:
    """The config of a run's newest readable checkpoint (or of ``step``); reads and writes nothing else. The run is
    where it was read, wherever it was trained: ``train.run_dir`` is ``run_dir``, and a tokenizer named relative to
    the run (its own copy: chimera_jax/tokenizer.py ``RUN_TOKENIZER``) is the one in ``run_dir``."""
    with Checkpointer(run_dir, keep=None, read_only=True) as ckpt:
        for s in ckpt.candidates(step):
            try:
                cfg = from_yaml(ckpt.read_meta(s)["config"])
                return replace(cfg, train=replace(cfg.train, run_dir=str(run_dir)),
                               data=replace(cfg.data, tokenizer=in_run(cfg.data.tokenizer, run_dir)))
            except Exception as err:  # noqa: BLE001
                log.warning("checkpoint %d config unreadable (%s)", s, err)
    raise CheckpointError(f"no readable checkpoint in {ckpt.directory}")


def load_model(run_dir: str | Path, step: int | None = None) -> tuple[Decoder, RunConfig]:
    """``(model, cfg)`` from a run directory, reading only its ``model`` item; the config is the checkpoint's."""
    cfg = load_run_config(run_dir, step)
    # Shapes only: the key is never used to draw numbers, and no optimizer is built.
    skeleton = eqx.filter_eval_shape(build_model, cfg.model, jax.random.PRNGKey(0))
    with Checkpointer(run_dir, keep=None, read_only=True) as ckpt:
        model, _ = ckpt.restore_model(skeleton, cfg, step)
    return model, cfg
