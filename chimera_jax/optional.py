"""Optional extras (torch, transformers, lm-eval) imported by name, so a missing one fails with the fix in the message.

The core package never needs them; the bridge, the HF tokenizers and the harness adapter do.
"""

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
