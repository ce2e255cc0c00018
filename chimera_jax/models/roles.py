"""Parameter roles, read from a leaf's path: the one naming convention behind weight decay, the
time-indexed gates and the parameter report's matrix count.

Every module in chimera_jax/models names its arrays by this convention:

- ``MATRIX``: the attribute is ``weight`` or starts with ``w_`` (``w_conv`` included). The optimizer
  decays it, the parameter report counts it under ``matrix`` (the parameters a FLOPs estimate
  multiplies by), and the time-indexed stack gates it at ``TimeConfig.gate`` granularity.
- ``CHANNEL``: a norm ``scale``, the SSM's skip ``D`` or its ``dt_bias``: one value per channel, where a
  positive factor has a clean meaning (time_indexed.py says which), so the time-indexed stack gates it
  element-wise. Not decayed: pulling these to 0 would not regularise but move the dynamics somewhere
  arbitrary (no skip, every Δ at softplus(0)).
- ``OTHER``: everything else (biases, ``A_log``, learned positions): neither decayed nor gated.

The role depends on the name, never on the rank: stacked layers and experts give vectors a leading axis.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence

import jax

CHANNEL_NAMES = ("scale", "D", "dt_bias")


class Role(enum.Enum):
    MATRIX = "matrix"
    CHANNEL = "channel"
    OTHER = "other"


def role(path: Sequence) -> Role:
    """The role of the leaf at ``path`` (a JAX key path, as ``tree_flatten_with_path`` gives)."""
    last = path[-1] if path else None
    name = last.name if isinstance(last, jax.tree_util.GetAttrKey) else ""
    if name == "weight" or name.startswith("w_"):
        return Role.MATRIX
    if name in CHANNEL_NAMES:
        return Role.CHANNEL
    return Role.OTHER


def is_matrix(path: Sequence) -> bool:
    return role(path) is Role.MATRIX
