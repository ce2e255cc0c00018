"""A fine-tuning run: a trained run's model, tokenizer and config, or an imported HF model with its own tokenizer,
trained further by the training loop on SFT or DPO records (train/loop.py ``run``: the same checkpoints, metrics,
TensorBoard and exact resume as pretraining).

An HF model (a hub name, a folder with config.json and weights, a ``.gguf`` file or ``smollm2``:
bridge/hf_load.py) becomes our Decoder (bridge/convert.py ``from_hf``); the run's config takes the model config
from the HF config. Its other settings are the defaults (``RunConfig``) and the flags.

A run whose source's tokenizer is an HF model's (``hf:SPEC``: the source is an HF model, or a run fine-tuned from
one) keeps a copy of it, ``RUN/tokenizer/``, saved when the run starts and named relative to the run,
``hf:$RUN/tokenizer`` (chimera_jax/tokenizer.py ``RUN_TOKENIZER``; ``load_run_config`` reads it as the copy in the
run's directory), so the run loads, evaluates, generates and resumes like any run without SPEC, also once moved or
copied elsewhere.

For DPO the frozen reference is the starting model: its log-probabilities of every record's chosen and
rejected responses are computed once, before training, and travel in the batches.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from chimera_jax.bridge.hf_load import is_run_dir, load_hf
from chimera_jax.config import (
    ConfigError,
    DataConfig,
    FinetuneConfig,
    ModelConfig,
    RunConfig,
    load_config,
    replace,
    resolve_config,
    to_yaml,
)
from chimera_jax.errors import UserError
from chimera_jax.finetune.data import Rows, encode_records, read_records, split_validation, step_rows
from chimera_jax.finetune.losses import SFT_LOSS, batch_logps, dpo_loss, dpo_step_loss
from chimera_jax.hf.spec import load_hf_config, recorded_spec
from chimera_jax.tokenizer import HF_PREFIX, RUN_TOKENIZER, get_tokenizer, in_run, tokenizer_copy
from chimera_jax.train.checkpoint import EXECUTION_ONLY, CheckpointError, load_model, load_run_config
from chimera_jax.train.distributed import initialize
from chimera_jax.train.loop import Objective, run
from chimera_jax.train.mesh import batch_sharding, make_mesh
from chimera_jax.train.optimizer import trainable
from chimera_jax.train.state import TrainerState

log = logging.getLogger(__name__)


def imported_config(spec: str, run_dir: str | Path | None = None) -> ModelConfig:
    """The ModelConfig of the HF model ``spec``, read from its config alone (no weights). ``run_dir``: the
    fine-tuning run's directory, so that a run resumed after its source is gone says so."""
    from chimera_jax.bridge.convert import config_from_hf

    try:
        return config_from_hf(load_hf_config(spec))
    except (OSError, ValueError, UserError) as err:  # no such folder, file or hub name; not a model; not GPT-2 or Llama
        why = " ".join(str(err).split())
        if run_dir is not None and is_run_dir(str(run_dir)):
            raise ConfigError(f"checkpoint: {spec}, the source of the run in {run_dir}, cannot be read ({why}); "
                              "resuming that run loads it again (its starting weights, DPO's reference)") from None
        raise ConfigError(f"checkpoint: {spec} is neither a run directory (no checkpoints/ in it) nor an HF model "
                          f"to import: {why}") from None


def source_config(source: str, run_dir: str | Path | None = None) -> RunConfig:
    """The config a fine-tuning run (in ``run_dir``) starts from: a run's own, or, for an HF model, its model
    config and tokenizer under the defaults (the window no longer than the model's positions), named after the
    model."""
    if is_run_dir(source):
        try:
            return load_run_config(source)
        except CheckpointError as err:
            raise ConfigError(f"checkpoint: {err}") from None
    spec = recorded_spec(source)
    model = imported_config(spec, run_dir)
    data = DataConfig(tokenizer=HF_PREFIX + spec, seq_len=min(DataConfig.seq_len, model.max_seq_len))
    return RunConfig(name=model_name(spec), model=model, data=data)


def model_name(spec: str) -> str:
    """An imported HF model's name: its hub name's, folder's or file's last part."""
    return Path(spec).name.removesuffix(".gguf")


def check_source(ft: FinetuneConfig, run_dir: Path) -> None:
    """A one-line error, before any data is read, for a source that is neither a run nor an HF model to import
    (or, resuming the run in ``run_dir``, that is gone)."""
    if ft.source is None:
        raise ConfigError("checkpoint: no run or HF model to start from (--checkpoint RUN|MODEL, finetune.source)")
    if not is_run_dir(ft.source):
        if ft.source_step is not None:
            raise ConfigError(f"finetune.source_step={ft.source_step}: {ft.source} is an HF model, not a run")
        imported_config(ft.source, run_dir)


def naming_the_copy(cfg: RunConfig) -> RunConfig:
    """``cfg`` naming its run's copy of its tokenizer relative to the run, as the run records it, also when ``cfg``
    came from ``load_run_config`` (which names the copy by its path) or from a run made before that."""
    if cfg.data.tokenizer != in_run(RUN_TOKENIZER, cfg.run_dir):
        return cfg
    return replace(cfg, data=replace(cfg.data, tokenizer=RUN_TOKENIZER))


def tokenizer_to_keep(cfg: RunConfig) -> str | None:
    """The source's tokenizer, when ``cfg`` names the copy its run keeps and the copy is not saved yet."""
    if cfg.data.tokenizer != RUN_TOKENIZER or tokenizer_copy(cfg.run_dir).is_dir():
        return None
    return source_config(cfg.finetune.source, cfg.run_dir).data.tokenizer


def check_model_kept(source: str, overrides: Sequence[str]) -> None:
    """A one-line ConfigError for an override of the model (``--model.d_model 128``): the run trains the source's
    weights, so a changed field would be recorded for weights it does not describe, a run that cannot be loaded.
    Fields that change only how the model runs (``EXECUTION_ONLY``: remat, scan) may change."""
    for arg in overrides:
        name = arg[2:].partition("=")[0] if arg.startswith("--") else ""
        field = name.removeprefix("model.").replace("-", "_")
        if name == "model" or (name.startswith("model.") and field not in EXECUTION_ONLY):
            allowed = ", ".join(f"model.{k}" for k in sorted(EXECUTION_ONLY))
            raise ConfigError(f"--{name}: the model comes from the source ({source}); fine-tuning cannot change it "
                              f"(only how it runs: {allowed})")


def finetune_config(source: str | Path, stage: str, data: str, out: str | Path | None = None,
                    overrides: Sequence[str] = ()) -> RunConfig:
    """The fine-tuning run's config: the source run's (its model, tokenizer, optimizer and train settings) or an HF
    model's (``source_config``), named ``<name>-<stage>``, in ``out`` (default: a run's directory + ``-sft`` /
    ``-dpo``, ``checkpoints/<name>-<stage>`` for an HF model), with the dotted ``overrides`` (``--train.steps 200``,
    ``--finetune.beta 0.2``) applied last, except the model's (``check_model_kept``). An HF tokenizer (``hf:SPEC``)
    becomes the copy the run keeps (``RUN_TOKENIZER``)."""
    source = str(source)
    check_model_kept(source, overrides)
    if out is None:
        out = f"{source.rstrip('/')}-{stage}" if is_run_dir(source) else Path("checkpoints") / (
            f"{model_name(recorded_spec(source))}-{stage}")
    base = source_config(source, out)
    name = f"{base.name}-{stage}"
    if base.data.tokenizer.startswith(HF_PREFIX):
        base = replace(base, data=replace(base.data, tokenizer=RUN_TOKENIZER))
    # Local paths recorded absolute: a resumed run (DPO's reference included) loads them from any directory.
    cfg = replace(base, name=name, train=replace(base.train, run_dir=str(out)),
                  finetune=replace(base.finetune, stage=stage, source=recorded_spec(source),
                                   data=recorded_spec(str(data))))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "finetune.yaml"
        path.write_text(to_yaml(cfg))
        return load_config(path, overrides)


def starting_state(model: eqx.Module, cfg: RunConfig, optimizer: optax.GradientTransformation) -> TrainerState:
    """A new run's state around a trained model: fresh optimizer moments, step 0, the run's seed's key."""
    _, k_train = jax.random.split(jax.random.PRNGKey(cfg.train.seed))
    return TrainerState(model=model, opt_state=optimizer.init(trainable(model)), step=jnp.asarray(0, jnp.int32),
                        key=k_train)


def starting_model(ft: FinetuneConfig) -> eqx.Module:
    """The model to fine-tune, also DPO's reference: the run's checkpoint, or the HF model imported (float32)."""
    if is_run_dir(ft.source):
        return load_model(ft.source, ft.source_step)[0]
    from chimera_jax.bridge.convert import from_hf

    hf_model, _ = load_hf(ft.source, device="cpu")
    return from_hf(hf_model)[0]


def padded_chunks(arrays: Sequence[np.ndarray], size: int):
    """The arrays in chunks of ``size`` rows, the last padded with zero rows (zero masks: they score nothing)."""
    n = len(arrays[0])
    for start in range(0, n, size):
        chunk = [a[start : start + size] for a in arrays]
        yield [np.concatenate([c, np.zeros((size - len(c), *c.shape[1:]), c.dtype)]) for c in chunk]


def all_logps(model: eqx.Module, rows: Rows, batch_size: int) -> np.ndarray:
    """Every row's summed log-probability of its masked targets, ``batch_size`` rows per (one) compiled call."""
    out = [np.asarray(batch_logps(model, *map(jnp.asarray, chunk))) for chunk in padded_chunks(rows, batch_size)]
    return np.concatenate(out)[: len(rows.inputs)]


def sft_validation(rows: Rows, batch_size: int):
    """The held-out records' masked mean NLL (over all their response tokens) and its perplexity."""

    def validate(model) -> dict:
        loss = -float(all_logps(model, rows, batch_size).sum()) / float(rows.mask.sum())
        return {"loss": loss, "perplexity": float(np.exp(loss))}

    return validate


def dpo_validation(chosen: Rows, rejected: Rows, ref: tuple[np.ndarray, np.ndarray], beta: float, batch_size: int):
    """The held-out pairs' DPO loss, reward margin, preference accuracy and mean log-probabilities."""

    def validate(model) -> dict:
        logps = (all_logps(model, chosen, batch_size), all_logps(model, rejected, batch_size))
        _, metrics = dpo_loss(*map(jnp.asarray, (*logps, *ref)), beta)
        return {k: float(v) for k, v in metrics.items()}

    return validate


def place(arrays: Sequence[np.ndarray], mesh: Mesh) -> tuple[jax.Array, ...]:
    """Host arrays ``[grad_accum, batch, ...]`` (every process holds them all) on the mesh, rows split."""
    sharding = batch_sharding(mesh)
    return tuple(jax.make_array_from_callback(a.shape, sharding, lambda index, a=a: a[index]) for a in arrays)


def finetune(cfg: RunConfig, max_traces: int | None = None, devices: Sequence[jax.Device] | None = None) -> dict:
    """Fine-tune ``cfg.finetune.source``'s model on ``cfg.finetune.data`` (``finetune_config`` builds ``cfg``) in
    ``cfg.run_dir``, continuing from its newest checkpoint if there is one. The records are read and checked
    (``DataReport``) before the run's copy of its tokenizer is saved, the model loads or anything compiles."""
    cfg = naming_the_copy(cfg)
    ft, tc = cfg.finetune, cfg.train
    check_source(ft, cfg.run_dir)
    if ft.data is None:
        raise ConfigError("finetune.data: no records to train on (--data FILE.jsonl or an HF dataset name)")
    initialize(cfg.distributed)
    unsaved = tokenizer_to_keep(cfg)
    tokenizer = get_tokenizer(unsaved or in_run(cfg.data.tokenizer, cfg.run_dir))
    records = read_records(ft.data, ft.split, ft.max_records, ft.subset)
    rows, report = encode_records(records, ft, tokenizer, cfg.data.seq_len, ft.data)
    if unsaved:  # an hf: name: an HFTokenizer
        tokenizer.save(tokenizer_copy(cfg.run_dir))
    train_rows, val_rows = split_validation(rows, ft.val_fraction)
    log.info("%s", report.line())
    cfg = resolve_config(cfg, tokenizer.vocab_size)
    mesh = make_mesh(cfg, devices)
    model = starting_model(ft)
    n, count = len(train_rows[0].inputs), tc.grad_accum * tc.batch_size
    if ft.stage == "sft":
        arrays, loss = tuple(train_rows[0]), SFT_LOSS
        validate, val_keys = sft_validation(val_rows[0], tc.batch_size), ("loss", "perplexity")
    else:
        # The frozen reference: the starting model's log-probabilities, computed once.
        ref = tuple(all_logps(model, r, tc.batch_size) for r in train_rows)
        val_ref = tuple(all_logps(model, r, tc.batch_size) for r in val_rows)
        arrays, loss = (*train_rows[0], *train_rows[1], *ref), dpo_step_loss(ft.beta)
        validate = dpo_validation(*val_rows, val_ref, ft.beta, tc.batch_size)
        val_keys = ("loss", "reward_margin", "accuracy", "logp_chosen", "logp_rejected")

    def batch(step: int) -> tuple[jax.Array, ...]:
        index = step_rows(n, count, tc.seed, step).reshape(tc.grad_accum, tc.batch_size)
        return place([a[index] for a in arrays], mesh)

    objective = Objective(
        loss=loss, batch=batch, validate=validate, val_keys=val_keys,
        tokens_per_step=count * cfg.data.seq_len * len(train_rows),
        init=lambda optimizer: starting_state(model, cfg, optimizer),
        summary={"stage": ft.stage, "source": ft.source, "data": report.line(),
                 "records": {"train": n, "validation": len(val_rows[0].inputs)}})
    return run(cfg, objective, mesh, max_traces)
