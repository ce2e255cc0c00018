"""Load an HF causal LM and its own tokenizer from a hub name, a local folder, a ``.gguf`` file or a packaged name.

Nothing from a checkpoint is executed: ``trust_remote_code`` is off, so only transformers' own model
classes are used, and weights come from safetensors, GGUF, or torch files that transformers reads
with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

from pathlib import Path

from chimera_jax.bridge.torch_utils import default_device
from chimera_jax.config import ConfigError, RunConfig
from chimera_jax.hf.spec import load_hf_tokenizer, pretrained_args
from chimera_jax.optional import require


def is_run_dir(spec: str) -> bool:
    """A chimera training run (holds ``checkpoints/``), as opposed to an HF model."""
    return (Path(spec).expanduser() / "checkpoints").is_dir()


def run_model_as_hf(model, cfg: RunConfig):
    """One of our trained models exported in memory to its HF equivalent (float32, eval mode)."""
    from chimera_jax.bridge.convert import to_hf

    return to_hf(model, cfg.model, n_positions=cfg.model.max_seq_len or cfg.data.seq_len)


def load_run_as_hf(run_dir: str):
    """A trained chimera run exported in memory to its HF equivalent, with our tokenizer as an HF tokenizer."""
    from chimera_jax.bridge.hf_tokenizer import hf_tokenizer
    from chimera_jax.train.checkpoint import load_model

    model, cfg = load_model(run_dir)
    return run_model_as_hf(model, cfg), hf_tokenizer(cfg.data.tokenizer)


def load_hf(spec: str, device: str | None = None, dtype: str = "float32"):
    """``(model, tokenizer)`` in eval mode on ``device`` (default: cuda when available, else cpu).

    ``spec``: a hub name, a local HF folder, a ``.gguf`` file, a packaged name (``smollm2``), or one of
    our run directories (exported on the fly, so our checkpoints can be evaluated by torch too).
    """
    torch = require("torch")
    transformers = require("transformers")
    if is_run_dir(spec):
        model, tokenizer = load_run_as_hf(spec)
        return model.to(device or default_device(), getattr(torch, dtype)).eval(), tokenizer
    source, extra = pretrained_args(spec)
    try:
        tokenizer = load_hf_tokenizer(spec)
        model = transformers.AutoModelForCausalLM.from_pretrained(
            source, dtype=getattr(torch, dtype), trust_remote_code=False, **extra)
    except OSError as err:  # a name the user can fix, not a traceback
        raise ConfigError(f"cannot load {spec!r}: not a local folder or file, and not in the HF cache while the hub "
                      f"is unreachable or HF_HUB_OFFLINE=1 ({err})") from err
    return model.to(device or default_device()).eval(), tokenizer
