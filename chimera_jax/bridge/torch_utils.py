"""The one place the bridge imports torch, so a missing optional extra fails with the fix in the message."""

from __future__ import annotations

import importlib
from types import ModuleType

INSTALL_HINT = "pip install -e '.[torch]'  (install torch==2.13.0 first so transformers does not pull CUDA wheels)"


def require(module: str) -> ModuleType:
    """Import ``module`` (torch, transformers, safetensors...) or raise an ImportError saying how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(f"the PyTorch bridge needs {module!r}, which is not installed: {INSTALL_HINT}") from err


def default_device() -> str:
    torch = require("torch")
    return "cuda" if torch.cuda.is_available() else "cpu"
