"""Decoding parity with transformers: our cached greedy tokens equal ``generate()``'s for the same weights.

Tiny models of both exportable shapes (GPT-2: learned or sinusoidal positions, LayerNorm, GELU, biases;
Llama: RoPE, RMSNorm, SwiGLU, grouped-query heads, no biases), exported in memory with ``to_hf``; two
prompts of different lengths in one batch (right-padded on our side, left-padded on HF's).
"""

from __future__ import annotations

import jax
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from chimera_jax.bridge.convert import to_hf  # noqa: E402
from chimera_jax.bridge.hf_generate import hf_generate  # noqa: E402
from chimera_jax.config import ModelConfig  # noqa: E402
from chimera_jax.generate.engine import Generator  # noqa: E402
from chimera_jax.models.builder import build_model  # noqa: E402
from chimera_jax.tokenizer import get_tokenizer  # noqa: E402

pytestmark = pytest.mark.slow  # torch parity: generation against transformers

PROMPTS = ["Ad sales boost Time Warner profit", "Dollar gains"]
NEW_TOKENS = 12
SHAPES = {
    "gpt2-learned": ModelConfig(vocab_size=256, max_seq_len=64, d_model=32, n_layers=2, n_heads=4,
                                positions="learned"),
    "gpt2-sinusoidal": ModelConfig(vocab_size=256, max_seq_len=64, d_model=32, n_layers=2, n_heads=4,
                                   positions="sinusoidal", tie_embeddings=False),
    "llama": ModelConfig(vocab_size=256, max_seq_len=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
                         positions="rope", norm="rmsnorm", ffn="swiglu", bias=False),
}


def perturbed(cfg: ModelConfig):
    """A random model whose every array (norm scales and biases too) is moved off its init, so its logits are
    far from uniform and its greedy continuation is not one repeated token."""
    model = build_model(cfg, jax.random.PRNGKey(0))
    leaves, treedef = jax.tree_util.tree_flatten(model)
    keys = iter(jax.random.split(jax.random.PRNGKey(1), len(leaves)))
    return jax.tree_util.tree_unflatten(treedef, [
        leaf + 0.5 * jax.random.normal(next(keys), leaf.shape, leaf.dtype) if isinstance(leaf, jax.Array) else leaf
        for leaf in leaves])


@pytest.mark.parametrize("shape", SHAPES)
def test_greedy_tokens_equal_transformers_generate(shape):
    cfg = SHAPES[shape]
    model = perturbed(cfg)
    tokenizer = get_tokenizer("byte")
    ours = Generator(model, tokenizer).generate(PROMPTS, NEW_TOKENS, cache=True, ignore_eos=True)
    theirs = hf_generate(to_hf(model, cfg), tokenizer.encode_batch(PROMPTS), NEW_TOKENS)
    assert theirs.prompt_tokens == ours.prompt_tokens
    assert [len(t) for t in theirs.tokens] == [NEW_TOKENS, NEW_TOKENS]
    assert ours.tokens == theirs.tokens
    assert all(len(set(row)) > 2 for row in ours.tokens), f"degenerate continuation: {ours.tokens}"


def test_hf_generate_refuses_no_new_tokens():
    cfg = SHAPES["llama"]
    with pytest.raises(ValueError, match="max_new_tokens"):
        hf_generate(to_hf(build_model(cfg, jax.random.PRNGKey(0)), cfg), [[1, 2, 3]], 0)
