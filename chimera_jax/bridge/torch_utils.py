"""Which torch device the bridge runs on."""

from __future__ import annotations

from chimera_jax.optional import require


def default_device() -> str:
    torch = require("torch")
    return "cuda" if torch.cuda.is_available() else "cpu"
