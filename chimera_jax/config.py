"""Run configuration: one dataclass per concern, loaded from YAML with dotted CLI overrides.

Parsing is done by ``draccus`` (the config library Levanter uses): unknown keys and wrongly typed
values fail at start-up with a message naming the key. Impossible values and combinations fail there too:
each dataclass checks itself in ``__post_init__`` (which draccus and ``dataclasses.replace`` both run), and
RunConfig checks what spans sections, so a bad run stops with one line before any data is read.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import io
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import draccus
from draccus.utils import DecodingError, DraccusException

from chimera_jax.errors import UserError
from chimera_jax.tokenizer import HF_PREFIX, VOCAB_SIZES

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


class ConfigError(UserError, ValueError):
    """An impossible config value or combination; the message is one line naming the field(s)."""


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _at_least(section: str, obj, minimum: float, *names: str) -> None:
    """Each named field of ``obj`` (skipped when None, meaning "derive it") is at least ``minimum``."""
    for name in names:
        value = getattr(obj, name)
        _require(value is None or value >= minimum, f"{section}.{name}={value} must be >= {minimum}")


def _in_range(section: str, obj, name: str, low: float, high: float, closed_high: bool = False) -> None:
    """``low <= obj.name < high`` (``<= high`` when ``closed_high``)."""
    value = getattr(obj, name)
    ok = low <= value <= high if closed_high else low <= value < high
    _require(ok, f"{section}.{name}={value} must be in [{low}, {high}{']' if closed_high else ')'}")


@dataclass
class MoEConfig:
    """Mixture-of-Experts FFN (see chimera_jax/models/moe.py). Off: the model is exactly dense."""

    enabled: bool = False
    num_experts: int = 8
    top_k: int = 2
    every: int = 1  # every n-th layer's FFN is an MoE (the last layer of each group of n)
    d_ff: int | None = None  # per-expert hidden size; None -> model.d_ff
    # dense: every expert on every token (the test oracle); capacity: [E, C, D] buffers, overflow dropped;
    # dropless: sorted grouped matmul, nothing dropped (see chimera_jax/models/dispatch.py)
    dispatch: Literal["dense", "capacity", "dropless"] = "dropless"
    capacity_factor: float = 1.25  # C = ceil(capacity_factor * top_k * tokens / num_experts)
    # softmax_topk: gates are the full softmax's top-k probabilities, not renormalised (Switch / GShard);
    # topk_softmax: softmax over the k chosen logits, summing to 1 (Mixtral; = renormalised softmax_topk)
    gate: Literal["softmax_topk", "topk_softmax"] = "softmax_topk"
    noisy: bool = False  # Shazeer noisy top-k (learned, input-dependent noise), training only
    jitter: float = 0.0  # multiplicative router-input jitter, training only
    balance_loss_weight: float = 0.01  # Switch loss, = 1 at perfect balance (chimera_jax/models/routing.py)
    z_loss_weight: float = 1e-3
    bias: bool = False  # biases in the experts and the router

    def __post_init__(self) -> None:
        _at_least("model.moe", self, 1, "num_experts", "every", "d_ff")
        _require(1 <= self.top_k <= self.num_experts,
                 f"model.moe.top_k={self.top_k} must be between 1 and model.moe.num_experts={self.num_experts}")
        _require(self.capacity_factor > 0, f"model.moe.capacity_factor={self.capacity_factor} must be > 0")
        _at_least("model.moe", self, 0, "jitter", "balance_loss_weight", "z_loss_weight")


@dataclass
class SSMConfig:
    """Diagonal selective state-space token mixer (see chimera_jax/models/ssm.py)."""

    state_size: int = 16
    expand: int = 2
    dt_rank: int | None = None  # None -> ceil(d_model / 16)
    dt_min: float = 1e-3
    dt_max: float = 1e-1
    conv_kernel: int = 4  # causal depthwise convolution before the scan (Mamba); 1 = pointwise
    # How the recurrence runs (models/ssm.py): auto = chunked on CPU, associative elsewhere. Execution only.
    scan: Literal["auto", "chunked", "associative", "sequential"] = "auto"
    chunk: int | None = None  # tokens per step of the chunked scan; None: 8 for mamba, 32 for ssd (docs/speed.md)
    # mamba: Δ and A per channel (Mamba-1's diagonal scan); ssd: per head of head_dim channels (Mamba-2), whose
    # scan runs as matmuls. A different model, not an execution choice.
    kind: Literal["mamba", "ssd"] = "mamba"
    head_dim: int = 64  # channels per head, for kind ssd

    def __post_init__(self) -> None:
        _at_least("model.ssm", self, 1, "state_size", "expand", "dt_rank", "conv_kernel", "chunk", "head_dim")
        _require(0 < self.dt_min <= self.dt_max,
                 f"model.ssm.dt_min={self.dt_min} and model.ssm.dt_max={self.dt_max} must satisfy 0 < dt_min <= dt_max")


@dataclass
class TimeConfig:
    """Time-indexed parameter sharing across depth (see chimera_jax/models/time_indexed.py)."""

    enabled: bool = False
    emb_dim: int = 64  # sinusoidal embedding size of the scalar t
    hidden: int = 64  # width of the modulation network g_phi
    gate: Literal["out", "in_out", "lowrank", "full"] = "out"
    rank: int = 4  # for gate == "lowrank"
    gate_init: float = 0.5  # every gate's value at initialisation, in (0, 1)
    # Training across depths: each train step runs the shared block L' times, t = (i + 1) / L', L' drawn from
    # the step's key (a resumed run draws the same), within [depth_min, depth_max]. uniform: every depth alike;
    # lognormal: Huginn's L' = 1 + Poisson(e^τ), τ ~ N(log(n_layers - 1) - σ²/2, σ), mean about n_layers.
    # Evaluation and decoding run at n_layers (or --depth). fixed: every step at n_layers.
    train_depth: Literal["fixed", "uniform", "lognormal"] = "fixed"
    depth_min: int = 1
    depth_max: int | None = None  # required unless train_depth is fixed
    depth_sigma: float = 0.5  # lognormal: σ of τ

    def __post_init__(self) -> None:
        _at_least("model.time", self, 1, "emb_dim", "hidden", "rank", "depth_min", "depth_max")
        _require(0 < self.gate_init < 1, f"model.time.gate_init={self.gate_init} must be in (0, 1)")
        _require(self.train_depth == "fixed" or self.depth_max is not None,
                 f"model.time.train_depth={self.train_depth} needs model.time.depth_max (and depth_min, default 1)")
        _require(self.depth_max is None or self.depth_min <= self.depth_max,
                 f"model.time.depth_min={self.depth_min} must be <= model.time.depth_max={self.depth_max}")
        _require(self.depth_sigma > 0, f"model.time.depth_sigma={self.depth_sigma} must be > 0")


@dataclass
class ModelConfig:
    vocab_size: int | None = None  # None -> the tokenizer's vocabulary size
    max_seq_len: int | None = None  # None -> data.seq_len (learned positions need it)
    d_model: int = 256
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int | None = None  # None -> n_heads (grouped-query attention when smaller)
    d_ff: int | None = None  # None -> 4 * d_model (gelu) or the 8/3 rule rounded to 64 (swiglu)
    positions: Literal["learned", "sinusoidal", "rope", "none"] = "sinusoidal"
    rope_theta: float = 10000.0
    norm: Literal["layernorm", "rmsnorm"] = "layernorm"
    norm_eps: float = 1e-5
    ffn: Literal["gelu", "swiglu"] = "gelu"
    bias: bool = True
    tie_embeddings: bool = True
    dropout: float = 0.0
    mixer: Literal["attention", "ssm"] = "attention"
    # one learned logit per head that joins every softmax and takes no value (gpt-oss); models/attention.py
    attention_sinks: bool = False
    moe: MoEConfig = field(default_factory=MoEConfig)
    ssm: SSMConfig = field(default_factory=SSMConfig)
    time: TimeConfig = field(default_factory=TimeConfig)
    # Layers per step of the layer scan; >= n_layers unrolls the stack. Unrolled, each layer reads its
    # weights in place instead of copying its slice of the stacked arrays every step (faster for large
    # stacked weights such as MoE experts: docs/moe.md), and a time-indexed stack runs as a Python loop
    # that stacks no saved activations over depth (docs/speed.md), but compile time grows with depth.
    # Execution only: the parameters are the same, and a checkpoint resumes under any value.
    scan_unroll: int = 1
    # Gradient checkpointing of each layer-scan step: none keeps every activation for the backward pass;
    # block keeps only each layer's input and runs the layer again; dots keeps the matmul outputs and
    # recomputes the elementwise ops. Memory for time; execution only, like scan_unroll.
    remat: Literal["none", "block", "dots"] = "none"

    def __post_init__(self) -> None:
        _at_least("model", self, 1, "vocab_size", "max_seq_len", "d_model", "n_layers", "n_heads", "n_kv_heads",
                  "d_ff", "scan_unroll")
        _require(self.d_model % self.n_heads == 0,
                 f"model.d_model={self.d_model} must be divisible by model.n_heads={self.n_heads}")
        kv_heads = self.n_kv_heads or self.n_heads
        _require(self.n_heads % kv_heads == 0,
                 f"model.n_heads={self.n_heads} must be divisible by model.n_kv_heads={kv_heads}")
        head_dim = self.d_model // self.n_heads
        _require(self.positions != "rope" or head_dim % 2 == 0,
                 f"model.positions=rope needs an even head dimension: model.d_model={self.d_model} / "
                 f"model.n_heads={self.n_heads} = {head_dim}")
        _require(self.mixer != "ssm" or self.positions != "rope",
                 "model.mixer=ssm cannot use model.positions=rope: rotary positions belong to attention")
        d_inner = self.ssm.expand * self.d_model
        _require(self.mixer != "ssm" or self.ssm.kind != "ssd" or d_inner % self.ssm.head_dim == 0,
                 f"model.ssm.kind=ssd needs model.ssm.head_dim={self.ssm.head_dim} to divide the SSM's width "
                 f"model.ssm.expand * model.d_model = {d_inner}")
        _require(self.mixer != "ssm" or not self.attention_sinks,
                 "model.attention_sinks needs model.mixer=attention: an SSM has no softmax to add a sink to")
        _in_range("model", self, "dropout", 0, 1)
        _require(self.rope_theta > 0, f"model.rope_theta={self.rope_theta} must be > 0")
        _require(self.norm_eps > 0, f"model.norm_eps={self.norm_eps} must be > 0")
        if self.moe.enabled:
            _require(self.n_layers % self.moe.every == 0,
                     f"model.moe.every={self.moe.every} must divide model.n_layers={self.n_layers}")
            _require(not self.time.enabled,
                     "model.time.enabled and model.moe.enabled cannot both be true: time-indexed sharing of an MoE "
                     "FFN is not supported")
        t = self.time
        _require(t.train_depth == "fixed" or t.enabled,
                 f"model.time.train_depth={t.train_depth} needs model.time.enabled=true: only a shared block runs "
                 "at any depth")
        _require(t.train_depth != "lognormal" or t.depth_min <= self.n_layers <= t.depth_max,
                 f"model.time.train_depth=lognormal centres on model.n_layers={self.n_layers}, outside "
                 f"[model.time.depth_min, depth_max] = [{t.depth_min}, {t.depth_max}]")

    def resolved_d_ff(self) -> int:
        if self.d_ff is not None:
            return self.d_ff
        if self.ffn == "swiglu":
            return 64 * -(-int(8 * self.d_model / 3) // 64)
        return 4 * self.d_model


@dataclass
class DataConfig:
    corpus: str = "bbc_news"  # see chimera_jax/data.py for the names
    # Trained on instead when `corpus` has no train or validation split here (offline, no local copy);
    # the run records the corpus it used, and a resumed run keeps it.
    fallback: str | None = None
    tokenizer: str = "byte"  # gpt2, byte, or hf:MODEL (an imported HF model's own: chimera_jax/tokenizer.py)
    seq_len: int = 128
    data_dir: str | None = None  # local copy of a hub corpus; else $CHIMERA_DATA_DIR, ../shared/data
    cache_dir: str | None = None  # token cache; else $CHIMERA_CACHE or ~/.cache/chimera_jax

    def __post_init__(self) -> None:
        _at_least("data", self, 1, "seq_len")
        _require(self.tokenizer in VOCAB_SIZES or self.tokenizer.startswith(HF_PREFIX),
                 f"data.tokenizer={self.tokenizer!r} must be one of {', '.join(VOCAB_SIZES)} or {HF_PREFIX}MODEL")


@dataclass
class OptimConfig:
    lr: float = 3e-4
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    warmup_steps: int = 100
    weight_decay: float = 0.1  # applied to matrices only
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0  # global norm; <= 0 disables

    def __post_init__(self) -> None:
        _require(self.lr > 0, f"optim.lr={self.lr} must be > 0")
        _in_range("optim", self, "min_lr_ratio", 0, 1, closed_high=True)
        _at_least("optim", self, 0, "warmup_steps", "weight_decay")
        _in_range("optim", self, "b1", 0, 1)
        _in_range("optim", self, "b2", 0, 1)
        _require(self.eps > 0, f"optim.eps={self.eps} must be > 0")


@dataclass
class TrainConfig:
    steps: int = 1000
    batch_size: int = 8
    grad_accum: int = 1  # micro-batches per step; batch_size is per micro-batch
    seed: int = 0
    precision: Literal["f32", "bf16"] = "f32"  # bf16: bf16 compute, f32 parameters and optimizer
    log_every: int = 10
    eval_every: int = 500
    eval_batches: int = 16
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    run_dir: str | None = None  # None -> checkpoints/<name>
    progress: bool = True

    def __post_init__(self) -> None:
        _at_least("train", self, 1, "steps", "batch_size", "grad_accum", "log_every", "eval_every", "eval_batches",
                  "checkpoint_every", "keep_checkpoints")


@dataclass
class MeshConfig:
    """How the devices split the work (docs/distributed.md): a ``jax.sharding.Mesh`` of axes data x fsdp x expert
    whose product is the device count; -1 (on one axis) takes the devices the others leave.

    The batch is split over all three axes. ``data`` replicates the parameters; ``fsdp`` splits every matrix
    and its optimizer moments, gathered in the compute precision for each step; ``expert`` splits each MoE
    layer's experts (on a dense model it is one more data axis)."""

    data: int = -1
    fsdp: int = 1
    expert: int = 1

    def __post_init__(self) -> None:
        sizes = {name: getattr(self, name) for name in ("data", "fsdp", "expert")}
        for name, size in sizes.items():
            _require(size == -1 or size >= 1, f"mesh.{name}={size} must be -1 (the rest) or >= 1")
        named = ", ".join(f"mesh.{name}={size}" for name, size in sizes.items())
        _require(list(sizes.values()).count(-1) <= 1, f"mesh: only one axis can be -1 (the rest), got {named}")


@dataclass
class DistributedConfig:
    """One run over several processes (hosts), each driving its own devices: ``jax.distributed.initialize``.

    Set the coordinator, process count and this process's id, or ``cluster`` to let JAX read them from the
    cluster's environment (SLURM, Open MPI, Kubernetes, TPU pods). Neither: a single-process run."""

    coordinator: str | None = None  # HOST:PORT of process 0, which every process connects to
    num_processes: int | None = None
    process_id: int | None = None
    cluster: bool = False

    def __post_init__(self) -> None:
        explicit = (self.coordinator, self.num_processes, self.process_id)
        _require(all(v is None for v in explicit) or all(v is not None for v in explicit),
                 "distributed.coordinator, distributed.num_processes and distributed.process_id go together: "
                 f"got {self.coordinator!r}, {self.num_processes!r}, {self.process_id!r}")
        _require(not (self.cluster and self.coordinator), "distributed.cluster reads the coordinator from the "
                 "environment: do not also set distributed.coordinator")
        if self.coordinator is not None:
            host, _, port = self.coordinator.rpartition(":")
            _require(bool(host) and port.isdigit(), f"distributed.coordinator={self.coordinator!r} must be HOST:PORT")
            _require(self.num_processes >= 1 and 0 <= self.process_id < self.num_processes,
                     f"distributed.process_id={self.process_id} must be in [0, distributed.num_processes="
                     f"{self.num_processes})")

    @property
    def enabled(self) -> bool:
        return self.cluster or self.coordinator is not None


@dataclass
class FinetuneConfig:
    """Fine-tuning a trained run: supervised (sft) or DPO (chimera_jax/finetune/, docs/finetune.md). Unused by
    pretraining; a fine-tuning run records here where it started and what it read."""

    stage: Literal["sft", "dpo"] = "sft"
    source: str | None = None  # the starting run directory or HF model (also DPO's frozen reference)
    source_step: int | None = None  # its checkpoint step; None: the newest
    data: str | None = None  # a JSONL file, or an HF dataset name (tatsu-lab/alpaca, Anthropic/hh-rlhf)
    split: str = "train"  # the HF dataset's split
    subset: str | None = None  # the HF dataset's configuration, when it has several (ai2_arc: ARC-Easy)
    prompt_field: str = "prompt"  # "" (dpo): the chosen and rejected texts' common prefix, as in Anthropic/hh-rlhf
    input_field: str | None = None  # appended to the prompt after a blank line when non-empty (alpaca's "input")
    response_field: str = "response"  # sft
    chosen_field: str = "chosen"  # dpo
    rejected_field: str = "rejected"  # dpo
    val_fraction: float = 0.1  # the source's last records (at least one), held out for validation
    max_records: int | None = None  # read at most this many records
    beta: float = 0.1  # dpo: strength of the pull towards the reference

    def __post_init__(self) -> None:
        _require(0 < self.val_fraction < 1, f"finetune.val_fraction={self.val_fraction} must be in (0, 1)")
        _at_least("finetune", self, 1, "max_records")
        _require(self.beta > 0, f"finetune.beta={self.beta} must be > 0")
        _require(bool(self.prompt_field) or self.stage == "dpo",
                 "finetune.prompt_field='' (the common prefix of chosen and rejected) needs finetune.stage=dpo")


@dataclass
class RunConfig:
    name: str = "dense"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    mesh: MeshConfig = field(default_factory=MeshConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)

    def __post_init__(self) -> None:
        """The checks that span sections; each section has checked itself. The mesh's fit to the devices
        is checked once they are known (chimera_jax/train/mesh.py)."""
        m, d = self.model, self.data
        _require(m.positions != "learned" or m.max_seq_len is None or d.seq_len <= m.max_seq_len,
                 f"data.seq_len={d.seq_len} exceeds model.max_seq_len={m.max_seq_len}, the learned positions")
        known = VOCAB_SIZES.get(d.tokenizer, 0)  # an HF model's tokenizer: checked once loaded (resolve_config)
        _require(m.vocab_size is None or m.vocab_size >= known,
                 f"model.vocab_size={m.vocab_size} is smaller than the {d.tokenizer} tokenizer's {known}")
        _require(not m.moe.enabled or self.mesh.expert == -1 or m.moe.num_experts % self.mesh.expert == 0,
                 f"mesh.expert={self.mesh.expert} must divide model.moe.num_experts={m.moe.num_experts}")

    @property
    def run_dir(self) -> Path:
        return Path(self.train.run_dir or (Path("checkpoints") / self.name))


def resolve_config(cfg: RunConfig, vocab_size: int) -> RunConfig:
    """Fill the model fields that default to the data's: vocabulary size and maximum length."""
    model = dataclasses.replace(cfg.model, vocab_size=cfg.model.vocab_size or vocab_size,
                                max_seq_len=cfg.model.max_seq_len or cfg.data.seq_len)
    _require(model.vocab_size >= vocab_size,
             f"model.vocab_size={model.vocab_size} is smaller than the tokenizer's {vocab_size}")
    return dataclasses.replace(cfg, model=model)


def check_rolling_cache(model: ModelConfig) -> None:
    """A rolling KV cache (``--window``, ``--sink-tokens``) holds attention's keys and values: a model without
    attention layers has none to roll, and would silently run as without it."""
    if model.mixer != "attention":
        raise ConfigError(f"window: a rolling KV cache needs attention layers; this model's mixer is "
                          f"{model.mixer!r} (its state is constant-size already): drop --window")


def preset_path(name: str) -> Path:
    path = CONFIG_DIR / f"{name}.yaml"
    if not path.exists():
        raise ConfigError(f"model: unknown preset {name!r} (no {path}); known presets: {', '.join(presets())}")
    return path


def presets() -> list[str]:
    """The names ``--model NAME`` takes: the YAML files of configs/."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def parse_args(argv: Sequence[str] | None = None) -> tuple[RunConfig, list[str]]:
    """Parse ``[--model NAME | --config FILE] [--a.b value ...]`` into a RunConfig.

    Returns the config and the flags draccus did not own (``--resume``) so scripts can add their own.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    config_path: Path | None = None
    extra: list[str] = []
    rest: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg in ("--model", "--config") and i + 1 < len(args):
            config_path = preset_path(args[i + 1]) if arg == "--model" else Path(args[i + 1])
            i += 2
        elif arg == "--resume":
            extra.append(arg)
            i += 1
        else:
            rest.append(arg)
            i += 1
    if config_path is not None and not config_path.is_file():
        raise ConfigError(f"config: no such file {config_path}")
    return _checked(draccus.parse, RunConfig, config_path=config_path, args=rest, exit_on_error=False), extra


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> RunConfig:
    return _checked(draccus.parse, RunConfig, config_path=Path(path), args=list(overrides), exit_on_error=False)


def to_yaml(cfg: RunConfig) -> str:
    return draccus.dump(cfg)


def from_yaml(text: str) -> RunConfig:
    return _checked(draccus.load, RunConfig, io.StringIO(text))


def _checked(parse, *args, **kwargs) -> RunConfig:
    """Run a draccus parser, raising any failure as a one-line ConfigError: a failed check as the ConfigError it
    is rather than draccus's wrapper ("Couldn't instantiate class ..."), which would hide the line that names the
    field; an unknown or value-less flag as argparse's message rather than the usage of every field."""
    try:
        return parse(*args, **kwargs)
    except (DraccusException, argparse.ArgumentError) as err:
        if isinstance(err.__cause__, ConfigError):
            raise err.__cause__ from None
        raise ConfigError(_with_suggestions(one_line(err))) from err


def _with_suggestions(message: str) -> str:
    """``unrecognized arguments: --train.stepz 20`` followed by ``(did you mean --train.steps?)``."""
    if not message.startswith("unrecognized arguments:"):
        return message
    fields = list(flat_fields(RunConfig()))
    guesses = [g for flag in re.findall(r"--([\w.]+)", message) for g in difflib.get_close_matches(flag, fields, n=1)]
    return f"{message} (did you mean {', '.join(f'--{g}' for g in guesses)}?)" if guesses else message


def one_line(err: Exception) -> str:
    """The message of a parse or config error as one line that names the field."""
    cause = err.__cause__
    if isinstance(err, DecodingError):
        while isinstance(err.__cause__, DecodingError):  # innermost: "Couldn't parse 'x' into an int"
            err = err.__cause__
        return f"{'.'.join(err.key_path)}: {' '.join(err.message.split())}" if err.key_path else err.message
    if isinstance(err, DraccusException) and isinstance(cause, ValueError):  # a dataclass's __post_init__ check
        return " ".join(str(cause).split())
    return " ".join(str(err).split())


def replace(cfg, **changes):
    return dataclasses.replace(cfg, **changes)


def flat_fields(cfg, prefix: str = "") -> dict:
    """A config's fields as ``{"model.moe.top_k": 2, ...}``: what two configs differ in, field by field."""
    out = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            out.update(flat_fields(value, f"{prefix}{f.name}."))
        else:
            out[f"{prefix}{f.name}"] = value
    return out
