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

from chimera_jax.config import RunConfig, flat_fields, from_yaml, to_yaml
from chimera_jax.models.builder import build_model
from chimera_jax.models.params import is_param
from chimera_jax.models.transformer import Decoder
from chimera_jax.train.state import TrainerState

log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    pass


def _manager(directory: Path, keep: int | None = None) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=False,
                                           cleanup_tmp_directories=True)
    return ocp.CheckpointManager(directory.resolve(), options=options)


def _train_item(state: TrainerState) -> dict:
    """The part of a state that only resuming needs: everything but the model."""
    return {"opt_state": state.opt_state, "step": state.step, "key": state.key}


class Checkpointer:
    """Save and restore TrainerStates under ``run_dir/checkpoints/<step>``; keeps the last ``keep``."""

    def __init__(self, run_dir: str | Path, keep: int | None = 3):
        self.directory = Path(run_dir) / "checkpoints"
        self.manager = _manager(self.directory, keep)

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

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
        candidates = [step] if step is not None else sorted(self.steps(), reverse=True)
        if not candidates:
            raise CheckpointError(f"no checkpoints in {self.directory}")
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


def check_model_config(saved: RunConfig, current: RunConfig, where: Path) -> None:
    saved_model, current_model = flat_fields(saved.model), flat_fields(current.model)
    diffs = {k: (saved_model.get(k), current_model.get(k)) for k in saved_model.keys() | current_model.keys()
             if saved_model.get(k) != current_model.get(k) and k not in EXECUTION_ONLY}
    if diffs:
        lines = "\n".join(f"  model.{k}: checkpoint {a!r} vs config {b!r}" for k, (a, b) in sorted(diffs.items()))
        raise CheckpointError(f"checkpoint {where} was trained with a different model config:\n{lines}\n"
                              "Use a new train.run_dir, or the checkpoint's own config.")


def load_run_config(run_dir: str | Path, step: int | None = None) -> RunConfig:
    ckpt = Checkpointer(run_dir, keep=None)
    steps = [step] if step is not None else sorted(ckpt.steps(), reverse=True)
    for s in steps:
        try:
            return from_yaml(ckpt.read_meta(s)["config"])
        except Exception as err:  # noqa: BLE001
            log.warning("checkpoint %d config unreadable (%s)", s, err)
    raise CheckpointError(f"no readable checkpoint in {Path(run_dir) / 'checkpoints'}")


def load_model(run_dir: str | Path, step: int | None = None) -> tuple[Decoder, RunConfig]:
    """``(model, cfg)`` from a run directory, reading only its ``model`` item; the config is the checkpoint's."""
    cfg = load_run_config(run_dir, step)
    # Shapes only: the key is never used to draw numbers, and no optimizer is built.
    skeleton = eqx.filter_eval_shape(build_model, cfg.model, jax.random.PRNGKey(0))
    ckpt = Checkpointer(run_dir, keep=None)
    try:
        model, _ = ckpt.restore_model(skeleton, cfg, step)
    finally:
        ckpt.close()
    return model, cfg
