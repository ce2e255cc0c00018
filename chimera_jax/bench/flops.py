"""Model FLOPs per token, counted from a config, and MFU against a matmul peak measured in the same process.

The count MFU divides by (model FLOPs utilisation, as in PaLM): the matrix products the model's definition
needs, not what an implementation does, so rematerialisation, the associative scan's extra combines or a
dense MoE dispatch do not raise it. A multiply-add counts as 2 FLOPs; a ``[m, k] @ [k, n]`` product as
``2 m k n``.

Per token, forward, with ``d = d_model``, ``T`` the sequence length, ``H`` heads of ``hd = d / H`` (query
width ``d``), ``G`` key/value heads (key/value width ``G hd``), ``f`` the FFN width, ``V`` the (padded)
vocabulary, ``L`` the layers (a time-indexed stack runs its shared block ``L`` times; trained at drawn depths,
``L`` is their mean)::

    attention   2 d (2 d + 2 G hd)          the q, k, v and output projections
                + 4 T d                     scores q·k and the weighted sum of values over all T keys
    ssm         2 d (2 Di)                  in-projection (scanned stream and gate), Di = expand * d
                + 2 K Di                    causal depthwise convolution of K taps
                + 2 Di (R + 2 N)            x-projection to Δ's low rank R, B and C (state size N)
                + 2 R Di                    Δ's up-projection (2 R Di / head_dim for kind ssd: one Δ per head)
                + 6 Di N                    the scan: Δ A and (Δ u) B (1 + 1), h = Ā h + B̄ u (2), y = C·h (2)
                + 2 Di d                    out-projection
    ffn         2 d f (x2, or x3 for SwiGLU)
    moe         top_k ffn's at the expert width, + 2 d E for the router over E experts (x2 when noisy)
    head        2 d V                       the logits (tied or not)

    forward  = L (mixer + ffn) + head         (an MoE layer's ffn replaced by its moe term, every n-th layer)
    training = 3 forward                      the backward pass takes two products per forward one: dX and dW

Attention counts all ``T`` keys per query, as the fused kernel computes them (a causal mask discards
half): the convention of PaLM's and nanoGPT's ``6 N + 12 L T d``, which this equals for GPT-2 up to the
biases and norms in ``N`` (``N`` counting the head, not the position embeddings). Not counted: elementwise
work (norms, activations, softmax, residual adds, the optimizer's update), embedding lookups, and the
time-indexed stack's gating of its weights, which is per step, not per token.

MFU = achieved model FLOP/s / the peak, taken as the FLOP/s of a jitted f32 square matmul timed in the
same run (``matmul_peak``): what this machine reaches on the work counted here, whatever its data sheet says.
"""

from __future__ import annotations

import math
import statistics

from chimera_jax.config import ModelConfig
from chimera_jax.timing import time_ms

PEAK_REPEATS = 5


def _ffn(d: int, width: int, swiglu: bool) -> int:
    return 2 * d * width * (3 if swiglu else 2)


def _mixer(cfg: ModelConfig, seq_len: int) -> dict[str, int]:
    d = cfg.d_model
    if cfg.mixer == "attention":
        kv = (cfg.n_kv_heads or cfg.n_heads) * (d // cfg.n_heads)
        return {"attention_projections": 2 * d * (2 * d + 2 * kv), "attention_scores": 4 * seq_len * d}
    s = cfg.ssm
    d_inner, rank = s.expand * d, s.dt_rank or math.ceil(d / 16)
    projections = (2 * d * 2 * d_inner + 2 * s.conv_kernel * d_inner + 2 * d_inner * (rank + 2 * s.state_size)
                   + 2 * rank * (d_inner if s.kind == "mamba" else d_inner // s.head_dim) + 2 * d_inner * d)
    return {"ssm_projections": projections, "ssm_scan": 6 * d_inner * s.state_size}


def forward_flops_per_token(cfg: ModelConfig, seq_len: int, depth: float | None = None) -> dict[str, float]:
    """The forward pass's FLOPs per token by part (the module docstring's table), for a resolved config
    (``vocab_size`` set) at ``seq_len`` tokens per sequence; ``depth``: a time-indexed stack run that many times
    (a mean when not whole) instead of ``n_layers``."""
    if cfg.vocab_size is None:
        raise ValueError("model.vocab_size is unresolved: use chimera_jax.config.resolve_config")
    if depth is not None and not cfg.time.enabled:
        raise ValueError("depth: only a time-indexed model runs at another depth")
    d, L, swiglu = cfg.d_model, cfg.n_layers if depth is None else depth, cfg.ffn == "swiglu"
    parts = {name: L * n for name, n in _mixer(cfg, seq_len).items()}
    dense = _ffn(d, cfg.resolved_d_ff(), swiglu)
    if cfg.moe.enabled:
        m = cfg.moe
        moe_layers = L // m.every
        parts["ffn"] = (L - moe_layers) * dense
        parts["experts"] = moe_layers * m.top_k * _ffn(d, m.d_ff or cfg.resolved_d_ff(), swiglu)
        parts["router"] = moe_layers * 2 * d * m.num_experts * (2 if m.noisy else 1)
    else:
        parts["ffn"] = L * dense
    parts["head"] = 2 * d * cfg.vocab_size
    return parts


def train_flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """Forward and backward: three times the forward matrix products, at the mean depth a train step runs (a
    time-indexed model trained at drawn depths: the mean of its draws)."""
    from chimera_jax.models.time_indexed import DepthSampler

    sampler = DepthSampler.of(cfg.time, cfg.n_layers)
    return 3 * sum(forward_flops_per_token(cfg, seq_len, None if sampler is None else sampler.expected()).values())


def utilisation(cfg: ModelConfig, seq_len: int, tokens_per_s: float, peak: float) -> dict:
    """A training row's FLOPs figures at ``tokens_per_s``: the forward parts, FLOPs per token, FLOP/s and MFU."""
    per_token = train_flops_per_token(cfg, seq_len)
    return {"forward_flops_per_token": forward_flops_per_token(cfg, seq_len), "flops_per_token": per_token,
            "flops_per_s": per_token * tokens_per_s, "mfu": per_token * tokens_per_s / peak}


def matmul_peak(n: int, repeats: int = PEAK_REPEATS) -> float:
    """FLOP/s of a jitted f32 ``[n, n] @ [n, n]`` (2 n^3 FLOPs), median of ``repeats`` after a warm-up."""
    import jax
    import jax.numpy as jnp

    a, b = jax.random.normal(jax.random.PRNGKey(0), (2, n, n), jnp.float32)
    matmul = jax.jit(jnp.matmul)
    ms = statistics.median(time_ms(lambda: matmul(a, b).block_until_ready(), repeats))
    return 2 * n**3 / (ms / 1000)
