"""Orbax checkpoints of a TrainerState plus the run's config and data position.

Arrays are saved as ``eqx.filter(state, eqx.is_array)`` and restored onto an ``eqx.filter_eval_shape``
skeleton of the state the current config builds, so nothing in a checkpoint is ever executed: Orbax
reads tensors (tensorstore) and JSON, never pickles.
"""

from __future__ import annotations

import logging
from pathlib import Path

import equinox as eqx
import orbax.checkpoint as ocp

from chimera_jax.config import RunConfig, from_yaml, to_yaml
from chimera_jax.models.params import is_param

log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    pass


def _manager(directory: Path, keep: int | None = None) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=False,
                                           cleanup_tmp_directories=True)
    return ocp.CheckpointManager(directory.resolve(), options=options)


class Checkpointer:
    """Save and restore TrainerStates under ``run_dir/checkpoints/<step>``; keeps the last ``keep``."""

    def __init__(self, run_dir: str | Path, keep: int | None = 3):
        self.directory = Path(run_dir) / "checkpoints"
        self.manager = _manager(self.directory, keep)

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def save(self, state, cfg: RunConfig, extra: dict | None = None) -> int:
        step = int(state.step)
        if step in self.manager.all_steps():  # e.g. a resumed run failing at once: that state is saved
            return step
        meta = {"step": step, "data_step": step, "config": to_yaml(cfg), **(extra or {})}
        self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(eqx.filter(state, eqx.is_array)), meta=ocp.args.JsonSave(meta)), force=True)
        self.manager.wait_until_finished()
        return step

    def read_meta(self, step: int) -> dict:
        return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

    def restore(self, skeleton, cfg: RunConfig | None = None, step: int | None = None):
        """Restore the newest readable checkpoint (or ``step``) onto ``skeleton``: ``(state, meta)``.

        A newest checkpoint that cannot be read is skipped with a warning and the one before used.
        A model config that differs from ``cfg.model`` raises CheckpointError naming the fields.
        """
        candidates = [step] if step is not None else sorted(self.steps(), reverse=True)
        if not candidates:
            raise CheckpointError(f"no checkpoints in {self.directory}")
        abstract = eqx.filter(skeleton, is_param)  # concrete or eval_shape skeletons
        for s in candidates:
            try:
                meta = self.read_meta(s)
            except Exception as err:  # noqa: BLE001 - any unreadable checkpoint is skipped the same way
                log.warning("checkpoint %d in %s is unreadable (%s); trying an older one", s, self.directory, err)
                continue
            if cfg is not None:
                check_model_config(from_yaml(meta["config"]), cfg, self.directory / str(s))
            try:
                restored = self.manager.restore(s, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))
            except Exception as err:  # noqa: BLE001
                log.warning("checkpoint %d in %s is incomplete or corrupt (%s); trying an older one", s,
                            self.directory, err)
                continue
            return eqx.combine(restored["state"], skeleton), meta
        raise CheckpointError(f"no readable checkpoint in {self.directory} (tried steps {candidates})")

    def close(self) -> None:
        self.manager.close()


# Model fields that change how the model runs, not what it computes or which parameters it has.
EXECUTION_ONLY = frozenset({"scan_unroll"})


def check_model_config(saved: RunConfig, current: RunConfig, where: Path) -> None:
    saved_model, current_model = _flat(saved.model), _flat(current.model)
    diffs = {k: (saved_model.get(k), current_model.get(k)) for k in saved_model.keys() | current_model.keys()
             if saved_model.get(k) != current_model.get(k) and k not in EXECUTION_ONLY}
    if diffs:
        lines = "\n".join(f"  model.{k}: checkpoint {a!r} vs config {b!r}" for k, (a, b) in sorted(diffs.items()))
        raise CheckpointError(f"checkpoint {where} was trained with a different model config:\n{lines}\n"
                              "Use a new train.run_dir, or the checkpoint's own config.")


def _flat(obj, prefix: str = "") -> dict:
    import dataclasses

    out = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            out.update(_flat(value, f"{prefix}{f.name}."))
        else:
            out[f"{prefix}{f.name}"] = value
    return out


def load_run_config(run_dir: str | Path, step: int | None = None) -> RunConfig:
    ckpt = Checkpointer(run_dir, keep=None)
    steps = [step] if step is not None else sorted(ckpt.steps(), reverse=True)
    for s in steps:
        try:
            return from_yaml(ckpt.read_meta(s)["config"])
        except Exception as err:  # noqa: BLE001
            log.warning("checkpoint %d config unreadable (%s)", s, err)
    raise CheckpointError(f"no readable checkpoint in {Path(run_dir) / 'checkpoints'}")



def load_model(run_dir: str | Path, step: int | None = None):
    """``(model, cfg)`` from a run directory: the config comes from the checkpoint itself."""
    from chimera_jax.train.optimizer import make_optimizer
    from chimera_jax.train.state import init_state

    cfg = load_run_config(run_dir, step)
    optimizer = make_optimizer(cfg.optim, cfg.train.steps)
    skeleton = eqx.filter_eval_shape(init_state, cfg, optimizer)
    ckpt = Checkpointer(run_dir, keep=None)
    try:
        state, _ = ckpt.restore(skeleton, cfg, step)
    finally:
        ckpt.close()
    return state.model, cfg
