"""The training loop: batches -> jitted step -> logging, validation and Orbax checkpoints; resumable, and stopped by
Ctrl-C or SIGTERM only between steps, once the last one is saved (train/interrupt.py).

One loop for one device, a node's devices and several processes (docs/distributed.md): the state and the
batches are placed on the run's mesh (train/mesh.py), and every process runs the loop in step, process 0
alone writing the metrics and the config and showing progress.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import equinox as eqx
import jax
import numpy as np
import optax
from jax.experimental import multihost_utils
from jax.sharding import Mesh
from tqdm.auto import tqdm

from chimera_jax import data
from chimera_jax.config import ConfigError, RunConfig, flat_fields, from_yaml, replace, resolve_config, to_yaml
from chimera_jax.errors import UserError
from chimera_jax.eval.perplexity import evaluate, model_batch_nll
from chimera_jax.eval.protocol import EvalProtocol
from chimera_jax.models.params import format_report, param_report
from chimera_jax.models.transformer import placing_layers
from chimera_jax.tokenizer import get_tokenizer
from chimera_jax.train.checkpoint import Checkpointer, CheckpointError, load_run_config
from chimera_jax.train.distributed import initialize, is_primary
from chimera_jax.train.interrupt import Interrupted, StopRequests
from chimera_jax.train.mesh import layer_placement, make_mesh, place_batch, place_rows, shard_state
from chimera_jax.train.metrics import MetricsLogger, metrics_at
from chimera_jax.train.optimizer import lr_schedule, make_optimizer
from chimera_jax.train.state import TrainerState, init_state
from chimera_jax.train.step import LM_LOSS, Loss, make_train_step

log = logging.getLogger(__name__)


class NonFiniteLoss(UserError, RuntimeError):
    """Training diverged: a step's loss was not finite. The last good state is saved first, and a command stops with
    one line and exit status 3 (cli/entry.py)."""

    status = 3


def validation_protocol(cfg: RunConfig) -> EvalProtocol:
    """The loop's validation: the first ``eval_batches * batch_size`` non-overlapping windows of the run's
    validation split, so ``chimera_jax.runs.evaluate.evaluate_checkpoint`` with this protocol reproduces it."""
    return EvalProtocol(split="validation", stride=cfg.data.seq_len, batch_size=cfg.train.batch_size,
                        max_windows=cfg.train.eval_batches * cfg.train.batch_size).resolved_for(cfg)


def validate_on_mesh(model: eqx.Module, stream: data.TokenStream, protocol: EvalProtocol, mesh: Mesh) -> dict:
    """``evaluate_model`` of a model placed on ``mesh`` (full-attention windows): each window batch split by rows
    over the devices and each layer gathered, as in the train step."""
    def batch_nll(*arrays: np.ndarray) -> jax.Array:
        return model_batch_nll(model, *(place_rows(array, mesh) for array in arrays))

    with jax.set_mesh(mesh), placing_layers(layer_placement(mesh)):
        return evaluate(batch_nll, stream, protocol)


def recorded_corpus(cfg: RunConfig) -> str | None:
    """The corpus a run being resumed trained on (None for a new run, or when no fallback is configured)."""
    if not cfg.data.fallback or not (cfg.run_dir / "checkpoints").is_dir():
        return None
    try:
        return load_run_config(cfg.run_dir).data.corpus
    except CheckpointError:
        return None


@dataclass(frozen=True)
class Objective:
    """What the loop trains: pretraining (``train``) and fine-tuning (chimera_jax/finetune/) are each one of these.

    ``batch(step)``: the step's batch, placed on the mesh, a function of the step alone (so a resumed run
    sees the same batches); ``validate(model)``: the validation metrics, of which ``val_keys`` are logged and
    reported; ``init(optimizer)``: the state a new run starts from; ``summary``: what the run's summary adds."""

    loss: Loss
    batch: Callable[[int], tuple[jax.Array, ...]]
    validate: Callable[[eqx.Module], dict]
    val_keys: tuple[str, ...]
    tokens_per_step: int
    init: Callable[[optax.GradientTransformation], TrainerState]
    summary: dict = field(default_factory=dict)


def train(cfg: RunConfig, max_traces: int | None = None, devices: Sequence[jax.Device] | None = None) -> dict:
    """Train ``cfg`` in ``cfg.run_dir``, continuing from its newest checkpoint if there is one, on a mesh of
    ``devices`` (default: all of every process; a checkpoint resumes on any mesh)."""
    initialize(cfg.distributed)
    tokenizer = get_tokenizer(cfg.data.tokenizer)
    cfg = resolve_config(cfg, tokenizer.vocab_size)
    mesh = make_mesh(cfg, devices)
    cfg = replace(cfg, data=data.with_fallback(cfg.data, recorded_corpus(cfg)))
    # Everything that can be wrong with the data is found before any compile.
    val_protocol = validation_protocol(cfg)
    train_tokens = data.load_stream(cfg.data, "train").tokens
    val_stream = data.load_stream(val_protocol.data_config(cfg.data), "validation")
    data.check_split_length(train_tokens, cfg.data.seq_len, f"{cfg.data.corpus}/train")
    data.check_split_length(val_stream.tokens, cfg.data.seq_len, f"{cfg.data.corpus}/validation")
    tc = cfg.train
    objective = Objective(
        loss=LM_LOSS, batch=lambda step: place_batch(train_tokens, cfg, step, mesh),
        validate=lambda model: validate_on_mesh(model, val_stream, val_protocol, mesh),
        val_keys=("loss", "perplexity", "bits_per_byte"),
        tokens_per_step=tc.batch_size * tc.grad_accum * cfg.data.seq_len,
        init=lambda optimizer: init_state(cfg, optimizer), summary={"corpus": cfg.data.corpus})
    return run(cfg, objective, mesh, max_traces)


def run(cfg: RunConfig, objective: Objective, mesh: Mesh, max_traces: int | None = None) -> dict:
    """The loop itself: ``objective`` trained in ``cfg.run_dir`` (resolved) on ``mesh``, from the newest checkpoint
    there if there is one, else from ``objective.init``; returns the run's summary. A run already at
    ``train.steps`` returns the figures it logged there; one past it is a ConfigError. SIGINT or SIGTERM stops it
    after the step in flight, saved (``Interrupted``)."""
    tc = cfg.train
    optimizer = make_optimizer(cfg.optim, tc.steps)
    ckpt = Checkpointer(cfg.run_dir, keep=tc.keep_checkpoints)
    try:
        # Built on one device, then split: exactly the single-device initialisation, on any mesh.
        state = resume(ckpt, shard_state(objective.init(optimizer), mesh), cfg)
        start = int(state.step)
        if start > tc.steps:
            raise ConfigError(f"train.steps={tc.steps}: the run in {cfg.run_dir} is already past that step, at step "
                              f"{start}; nothing to do (a larger train.steps trains on)")
        report = param_report(state.model)
        summary: dict = {"name": cfg.name, **objective.summary, "params": report["total"],
                         "active_params": report["active"], "devices": mesh.size, "mesh": dict(mesh.shape),
                         "steps": tc.steps, "start_step": start, "run_dir": str(cfg.run_dir)}
        if start == tc.steps:
            train_line, val_line = (metrics_at(cfg.run_dir, start, split) for split in ("train", "validation"))
            return {**summary, "final_train_loss": train_line.get("loss"),
                    **{f"val_{k}": val_line.get(k) for k in objective.val_keys},
                    "compile_s": None, "ms_per_step": None, "tokens_per_s": None}
        log.info("%s on %d devices, mesh %s\n%s", cfg.name, mesh.size, dict(mesh.shape), format_report(report))
        return {**summary, **train_steps(cfg, objective, mesh, state, optimizer, ckpt, max_traces)}
    finally:
        ckpt.close()
        # XLA:CPU maps each executable's code into memory regions of its own and JAX's caches keep them, so a
        # process that trains run after run (a study, a notebook, a test session) would reach the kernel's
        # limit on memory maps (vm.max_map_count) and crash inside XLA's compiler: drop them.
        jax.clear_caches()


def resume(ckpt: Checkpointer, state: TrainerState, cfg: RunConfig) -> TrainerState:
    """The newest checkpoint's state restored onto ``state``'s shardings, or ``state`` for a new run. Settings that
    differ from the checkpoint's are named in one line: the run continues under ``cfg``, which it records."""
    if not ckpt.steps():
        return state
    state, meta = ckpt.restore(state, cfg)
    log.info("resumed from %s at step %d", ckpt.directory, meta["step"])
    changed = changed_settings(from_yaml(meta["config"]), cfg)
    if changed and is_primary():
        log.info("resuming with changed settings (checkpoint -> now): %s", ", ".join(changed))
    return state


def changed_settings(saved: RunConfig, cfg: RunConfig) -> list[str]:
    """``"optim.lr 0.003 -> 0.001"`` for each optimizer, training or data field that ``cfg`` changes from ``saved``
    (the model cannot change: Checkpointer.restore refuses; the run directory may move)."""
    old, new = flat_fields(saved), flat_fields(cfg)
    return [f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(old.keys() | new.keys())
            if k.split(".")[0] in ("optim", "train", "data") and k != "train.run_dir" and old.get(k) != new.get(k)]


def requested_stop(stop: StopRequests) -> int | None:
    """The signal asking the run to stop, if any process received one. Processes agree on it after every step
    (one tiny collective), so all stop after the same step and save it together: Orbax's save is collective."""
    if jax.process_count() == 1:
        return stop.signum
    return int(multihost_utils.process_allgather(np.int32(stop.signum or 0)).max()) or None


def train_steps(cfg: RunConfig, objective: Objective, mesh: Mesh, state: TrainerState,
                optimizer: optax.GradientTransformation, ckpt: Checkpointer, max_traces: int | None) -> dict:
    """Steps ``state.step`` .. ``train.steps`` with logging, validation and checkpoints; the summary's timings and
    last figures. SIGINT and SIGTERM are requests to stop between steps only while they run (``StopRequests``)."""
    tc = cfg.train
    primary = is_primary()
    start = int(state.step)
    logger = MetricsLogger(cfg.run_dir, resume_step=start) if primary else None
    if primary:
        (cfg.run_dir / "config.yaml").write_text(to_yaml(cfg))
    step_fn = make_train_step(cfg, optimizer, lr_schedule(cfg.optim, tc.steps), max_traces=max_traces, donate=True,
                              mesh=mesh, loss=objective.loss)
    tokens_per_step = objective.tokens_per_step
    val: dict = {}
    bar = tqdm(total=tc.steps, initial=start, disable=not (tc.progress and primary), desc=cfg.name,
               dynamic_ncols=True)
    t_last, steps_since, compile_s, train_time = time.perf_counter(), 0, None, 0.0
    with StopRequests() as stop:
        try:
            for step in range(start, tc.steps):
                batch = objective.batch(step)
                t0 = time.perf_counter()
                new_state, metrics = step_fn(state, *batch)
                loss = float(metrics["loss"])  # also waits for the step, so timings are honest
                dt = time.perf_counter() - t0
                if compile_s is None:
                    compile_s = dt
                else:
                    train_time += dt
                state = new_state  # the old state was donated to the step
                if not math.isfinite(loss):
                    ckpt.save(state, cfg)  # a non-finite step leaves the state as it was: the last good one
                    raise NonFiniteLoss(f"non-finite loss ({loss}) at step {step + 1}: training diverged (a lower "
                                        "optim.lr or more optim.warmup_steps may help); the last good state "
                                        f"(step {int(state.step)}) is saved in {ckpt.directory}")
                done = step + 1
                steps_since += 1
                bar.update(1)
                if done % tc.log_every == 0 or done == tc.steps:
                    now = time.perf_counter()
                    tok_s = tokens_per_step * steps_since / (now - t_last)
                    t_last, steps_since = now, 0
                    if logger:
                        logger.log(done, {**jax.device_get(metrics), "tokens_per_s": tok_s})
                    bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{tok_s:,.0f}")
                if done % tc.eval_every == 0 or done == tc.steps:
                    result = objective.validate(state.model)
                    val = {k: result[k] for k in objective.val_keys}
                    if logger:
                        logger.log(done, val, split="validation")
                        bar.write(f"step {done}: val " + "  ".join(f"{k} {v:.4f}" for k, v in val.items()))
                if done % tc.checkpoint_every == 0 or done == tc.steps:
                    ckpt.save(state, cfg)
                if done < tc.steps and (signum := requested_stop(stop)):
                    ckpt.save(state, cfg)  # nothing to write when this step was just saved
                    bar.close()  # the line below ends the output, not the bar
                    interrupted = Interrupted(done, signum)
                    if primary:
                        log.warning("%s", interrupted)
                    raise interrupted
        finally:
            bar.close()
            if logger:
                logger.close()
    timed_steps = tc.steps - start - 1
    return {
        "final_train_loss": loss, **{f"val_{k}": val.get(k) for k in objective.val_keys}, "compile_s": compile_s,
        "ms_per_step": 1000 * train_time / timed_steps if timed_steps > 0 else None,
        "tokens_per_s": tokens_per_step * timed_steps / train_time if timed_steps > 0 and train_time else None,
    }


def format_summary(s: dict) -> str:
    """The summary as the line ``train`` ends with; for a run that was already complete, that it was, and the
    validation figures it logged then (if any)."""
    def f(v, spec):
        return "n/a" if v is None else format(v, spec)

    val = (f"val loss {f(s['val_loss'], '.4f')} ppl {f(s['val_perplexity'], '.2f')} "
           f"bpb {f(s['val_bits_per_byte'], '.4f')}")
    if s["start_step"] == s["steps"]:
        recorded = f"{val} | " if s["val_loss"] is not None else ""
        return (f"{s['name']} already complete at step {s['steps']} (train.steps={s['steps']}): nothing to do | "
                f"{recorded}{s['run_dir']}")
    return (f"done {s['name']}: {s['steps']} steps | params {s['params']:,} (active {s['active_params']:,}) | "
            f"{val} | {f(s['tokens_per_s'], ',.0f')} tok/s, "
            f"{f(s['ms_per_step'], '.1f')} ms/step, compile {f(s['compile_s'], '.1f')} s | {s['run_dir']}")
