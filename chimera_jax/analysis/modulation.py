"""Exploring a time-indexed model's learnt modulation: gates per layer, SSM dynamics per depth, depth sweeps.

Every function takes a model or a run directory (loaded with its newest checkpoint) and returns plain
numpy arrays, so a notebook only plots.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Int

from chimera_jax.eval.perplexity import evaluate_model
from chimera_jax.eval.protocol import EvalProtocol
from chimera_jax.models.ssm import SelectiveSSM
from chimera_jax.models.time_indexed import TimeIndexedStack, with_depth
from chimera_jax.models.transformer import Context, scan_layers
from chimera_jax.train.checkpoint import load_model

if TYPE_CHECKING:
    from chimera_jax.data import TokenStream


def as_model(model_or_run_dir: eqx.Module | str | Path) -> eqx.Module:
    """A time-indexed Decoder: given, or loaded from a run directory's newest checkpoint."""
    if isinstance(model_or_run_dir, (str, Path)):
        model_or_run_dir, _ = load_model(model_or_run_dir)
    if not isinstance(getattr(model_or_run_dir, "stack", None), TimeIndexedStack):
        raise ValueError("not a time-indexed model: its stack is not a TimeIndexedStack")
    return model_or_run_dir


def _at_depth(model_or_run_dir, depth: int | None) -> eqx.Module:
    model = as_model(model_or_run_dir)
    return model if depth is None else with_depth(model, depth)


def gate_values(model_or_run_dir, depth: int | None = None) -> dict[str, np.ndarray]:
    """``{leaf path: gates [L, *shape]}``, each layer's gate shaped to broadcast against the shared leaf
    (``[L, 1, d_out]`` for ``out`` gates of a matrix, ``[L, d_in, d_out]`` for the others, ``[L, d]`` for
    vectors), at the model's depth or ``depth``."""
    stack = _at_depth(model_or_run_dir, depth).stack
    gates = jax.vmap(stack.modulation)(stack.times())
    return {s.path: np.asarray(g) for s, g in zip(stack.modulation.specs, gates, strict=True)}


def gate_rows(gates: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``{leaf path: [L, d_out]}``: each layer's gates per output unit, averaged over the input axes."""
    return {name: g.reshape(g.shape[0], -1, g.shape[-1]).mean(axis=1) for name, g in gates.items()}


def gate_similarity(gates: dict[str, np.ndarray]) -> np.ndarray:
    """``[L, L]`` correlation between layers' gate rows (``gate_rows``, all leaves concatenated): 1 = two
    depths raise and lower the same units. A layer whose gates are all equal (every depth, at init) gives 0."""
    m = np.concatenate(list(gate_rows(gates).values()), axis=1)
    m = m - m.mean(axis=1, keepdims=True)
    m = m / np.maximum(np.linalg.norm(m, axis=1, keepdims=True), 1e-12)
    return m @ m.T


class _RecordInputs(eqx.Module):
    """Stands in for a time-indexed stack and also returns every layer's input hidden state as aux."""

    stack: TimeIndexedStack

    def __call__(self, x: Array, ctx: Context, key) -> tuple[Array, dict]:
        def step(t, h, k):
            out, _ = self.stack.block_at(t)(h, ctx, k)
            return out, {"inputs": h}

        return scan_layers(step, self.stack.times(), x, self.stack.depth, None)


@eqx.filter_jit
def _dynamics(model, tokens):
    recorder = eqx.tree_at(lambda m: m.stack, model, _RecordInputs(model.stack))
    _, aux = recorder(tokens, inference=True)
    stack = model.stack

    def per_layer(xs):
        t, h = xs
        block = stack.block_at(t)
        dt, A = block.mixer.dynamics(block.norm_mixer(h))
        decay = jnp.exp(dt[..., None] * A)  # [B, T, Di, N]
        return dt.mean(axis=(0, 1)), decay.mean(axis=(0, 1)), A

    # lax.map, not vmap: one layer's [B, T, Di, N] decays at a time.
    return jax.lax.map(per_layer, (stack.times(), aux["inputs"]))


def ssm_dynamics(model_or_run_dir, tokens: Int[Array, "B T"], depth: int | None = None) -> dict[str, np.ndarray]:
    """Per-depth SSM statistics on a probe batch, for a time-indexed model whose mixer is the SSM.

    ``dt [L, Di]``: mean step Δ per channel; ``decay [L, Di, N]``: mean effective per-token decay
    ``exp(Δ A)`` (1 = remembers, 0 = forgets); ``A [Di, N]``: the shared continuous-time ``A`` (ungated,
    so the same at every depth: depth changes the dynamics through Δ).
    """
    model = _at_depth(model_or_run_dir, depth)
    if not isinstance(model.stack.block.mixer, SelectiveSSM):
        raise ValueError("ssm_dynamics needs a model whose mixer is the selective SSM (model.mixer=ssm)")
    dt, decay, A = _dynamics(model, jnp.asarray(tokens))
    return {"dt": np.asarray(dt), "decay": np.asarray(decay), "A": np.asarray(A[0])}


def depth_losses(model_or_run_dir, stream: TokenStream, protocol: EvalProtocol, depths) -> dict[int, float]:
    """Mean loss (nats/token) of the same weights run at each depth, each scored by ``evaluate_model`` under
    ``protocol`` (resolved for the run: ``protocol.resolved_for(cfg)``)."""
    model = as_model(model_or_run_dir)
    return {int(d): evaluate_model(with_depth(model, int(d)), stream, protocol)["loss"] for d in depths}
