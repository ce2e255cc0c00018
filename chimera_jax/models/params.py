"""Parameter report: total parameters, parameters active per token and parameters in matrices, by component."""

from __future__ import annotations

import math
from collections import defaultdict

import equinox as eqx
import jax

from chimera_jax.models.roles import is_matrix


def _component(path) -> str:
    """Group a leaf by its role: the first attribute under the stack's block (mixer, ffn, norm...)."""
    names = [p.name for p in path if isinstance(p, jax.tree_util.GetAttrKey)]
    if not names:
        return "other"
    if names[0] != "stack":
        top = {"embed": "embedding", "pos_embed": "positions", "final_norm": "norms", "head": "head"}
        return top.get(names[0], names[0])
    for name in names[1:]:
        if name in ("mixer", "ffn"):
            return name
        if name.startswith("norm"):
            return "norms"
        if name in ("modulation",):
            return "modulation"
    return "stack_other"


def is_param(x) -> bool:
    """Arrays, and the ShapeDtypeStructs of a model built with ``eqx.filter_eval_shape`` (counted unallocated)."""
    return eqx.is_array(x) or isinstance(x, jax.ShapeDtypeStruct)


def inactive_params(model) -> int:
    """Parameters a token does not use: modules that route (MoE) say how many via ``inactive_param_count``."""
    routed = [m for m in jax.tree_util.tree_leaves(model, is_leaf=lambda m: hasattr(m, "inactive_param_count"))
              if hasattr(m, "inactive_param_count")]
    return sum(m.inactive_param_count() for m in routed)


def param_report(model) -> dict:
    """``{"total": n, "active": n, "matrix": n, "by_component": {name: n}}``; counts include every stacked
    layer. ``matrix`` counts the leaves roles.py calls matrices (the embedding table among them)."""
    by_component: dict[str, int] = defaultdict(int)
    matrix = 0
    leaves, _ = jax.tree_util.tree_flatten_with_path(eqx.filter(model, is_param))
    for path, leaf in leaves:
        by_component[_component(path)] += math.prod(leaf.shape)
        matrix += math.prod(leaf.shape) if is_matrix(path) else 0
    total = sum(by_component.values())
    return {"total": total, "active": total - inactive_params(model), "matrix": matrix,
            "by_component": dict(by_component)}


def format_report(report: dict) -> str:
    lines = [f"parameters: total {report['total']:,}  active/token {report['active']:,}  "
             f"in matrices {report['matrix']:,}"]
    lines += [f"  {name:<12} {n:>14,}" for name, n in sorted(report["by_component"].items())]
    return "\n".join(lines)
