"""HF GPT-2 / Llama checkpoints <-> our dense ``Decoder``: config mapping and weight import / export.

No separate model classes: both HF families are configurations of our one Decoder (GPT-2: learned
positions, LayerNorm, tanh-GELU, biases; Llama: RoPE, RMSNorm, SwiGLU, grouped-query heads, no biases).
A ``Layout`` names where each of our arrays lives in the HF state dict; the same table drives import
and export, and both are strict: every array on either side must be used exactly once.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from chimera_jax.config import ConfigError, ModelConfig
from chimera_jax.models.builder import build_model
from chimera_jax.models.layers import sinusoidal_positions
from chimera_jax.models.transformer import Decoder
from chimera_jax.optional import require

STACK = "stack.groups[0]."  # per-layer arrays, stacked on a leading layer axis
Entry = tuple[str, str, bool]  # (our path, HF name, transposed: HF nn.Linear stores [out, in], we store [in, out])


@dataclass(frozen=True)
class Layout:
    layer_prefix: str  # HF name prefix of layer i, with "{i}"
    layer: tuple[Entry, ...]  # our paths relative to STACK
    model: tuple[Entry, ...]


GPT2 = Layout(
    "transformer.h.{i}.",
    layer=(
        ("norm_mixer.scale", "ln_1.weight", False), ("norm_mixer.bias", "ln_1.bias", False),
        # c_attn is split into q / k / v on import and fused again on export (see _split_qkv / _fuse_qkv).
        ("mixer.w_q.weight", "attn.q.weight", False), ("mixer.w_q.bias", "attn.q.bias", False),
        ("mixer.w_k.weight", "attn.k.weight", False), ("mixer.w_k.bias", "attn.k.bias", False),
        ("mixer.w_v.weight", "attn.v.weight", False), ("mixer.w_v.bias", "attn.v.bias", False),
        ("mixer.w_o.weight", "attn.c_proj.weight", False), ("mixer.w_o.bias", "attn.c_proj.bias", False),
        ("norm_ffn.scale", "ln_2.weight", False), ("norm_ffn.bias", "ln_2.bias", False),
        ("ffn.w_in.weight", "mlp.c_fc.weight", False), ("ffn.w_in.bias", "mlp.c_fc.bias", False),
        ("ffn.w_out.weight", "mlp.c_proj.weight", False), ("ffn.w_out.bias", "mlp.c_proj.bias", False),
    ),
    model=(
        ("embed.weight", "transformer.wte.weight", False), ("pos_embed", "transformer.wpe.weight", False),
        ("final_norm.scale", "transformer.ln_f.weight", False), ("final_norm.bias", "transformer.ln_f.bias", False),
        ("head.weight", "lm_head.weight", True),
    ),
)

LLAMA = Layout(
    "model.layers.{i}.",
    layer=(
        ("norm_mixer.scale", "input_layernorm.weight", False),
        *((f"mixer.w_{a}.{p}", f"self_attn.{a}_proj.{p}", p == "weight") for a in "qkvo" for p in ("weight", "bias")),
        ("norm_ffn.scale", "post_attention_layernorm.weight", False),
        *((f"ffn.{ours}.{p}", f"mlp.{hf}_proj.{p}", p == "weight")
          for ours, hf in (("w_gate", "gate"), ("w_in", "up"), ("w_out", "down")) for p in ("weight", "bias")),
    ),
    model=(
        ("embed.weight", "model.embed_tokens.weight", False), ("final_norm.scale", "model.norm.weight", False),
        ("head.weight", "lm_head.weight", True),
    ),
)

LAYOUTS = {"gpt2": GPT2, "llama": LLAMA}
GPT2_TANH_GELU = ("gelu_new", "gelu_pytorch_tanh")  # our MLP's GELU is the tanh approximation


# ---------------------------------------------------------------------------------------------------------
# Configs


def architecture(hf_config) -> str:
    if hf_config.model_type not in LAYOUTS:
        raise ValueError(f"cannot import HF model_type {hf_config.model_type!r}: supported are {', '.join(LAYOUTS)}")
    return hf_config.model_type


def _mismatches(obj, want: dict) -> list[str]:
    """``"name=value (needs wanted)"`` for each attribute of ``obj`` that differs from ``want``."""
    return [f"{k}={getattr(obj, k)!r} (needs {v!r})" for k, v in want.items() if getattr(obj, k) != v]


def config_from_hf(c) -> ModelConfig:
    """The ModelConfig of our Decoder that computes the same function as an HF GPT-2 or Llama config."""
    if architecture(c) == "gpt2":
        problems = _mismatches(c, {"scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False})
        if c.activation_function not in GPT2_TANH_GELU:
            problems.append(f"activation_function={c.activation_function!r} (needs one of {GPT2_TANH_GELU})")
        _refuse(problems, "GPT-2")
        return ModelConfig(vocab_size=c.vocab_size, max_seq_len=c.n_positions, d_model=c.n_embd, n_layers=c.n_layer,
                           n_heads=c.n_head, d_ff=c.n_inner or 4 * c.n_embd, positions="learned", norm="layernorm",
                           norm_eps=c.layer_norm_epsilon, ffn="gelu", bias=True, tie_embeddings=c.tie_word_embeddings)
    rope = c.rope_parameters or {}
    problems = _mismatches(c, {"hidden_act": "silu", "mlp_bias": c.attention_bias,
                               "head_dim": c.hidden_size // c.num_attention_heads})
    if rope.get("rope_type") != "default":
        problems.append(f"rope_type={rope.get('rope_type')!r} (needs 'default': no RoPE scaling)")
    _refuse(problems, "Llama")
    return ModelConfig(vocab_size=c.vocab_size, max_seq_len=c.max_position_embeddings, d_model=c.hidden_size,
                       n_layers=c.num_hidden_layers, n_heads=c.num_attention_heads, n_kv_heads=c.num_key_value_heads,
                       d_ff=c.intermediate_size, positions="rope", rope_theta=float(rope["rope_theta"]),
                       norm="rmsnorm", norm_eps=c.rms_norm_eps, ffn="swiglu", bias=c.attention_bias,
                       tie_embeddings=c.tie_word_embeddings)


def export_problems(cfg: ModelConfig, arch: str) -> list[str]:
    """Why ``cfg`` has no exact HF ``arch`` equivalent (empty: it has one)."""
    problems = _mismatches(cfg, {"gpt2": {"norm": "layernorm", "ffn": "gelu", "bias": True, "mixer": "attention"},
                                 "llama": {"norm": "rmsnorm", "ffn": "swiglu", "positions": "rope",
                                           "mixer": "attention"}}[arch])
    if arch == "gpt2" and cfg.positions not in ("learned", "sinusoidal"):
        problems.append(f"positions={cfg.positions!r} (needs 'learned' or 'sinusoidal')")
    if arch == "gpt2" and cfg.n_kv_heads not in (None, cfg.n_heads):
        problems.append(f"n_kv_heads={cfg.n_kv_heads} (GPT-2 has no grouped-query heads)")
    if cfg.attention_sinks:
        problems.append("attention_sinks=True (no sink logits in HF GPT-2 or Llama)")
    return problems + [f"{name} is enabled (dense only)" for name in ("moe", "time") if getattr(cfg, name).enabled]


def export_architecture(cfg: ModelConfig) -> str:
    """``"gpt2"`` or ``"llama"``: the HF family that computes exactly what ``cfg`` does."""
    problems = {arch: export_problems(cfg, arch) for arch in LAYOUTS}
    for arch, found in problems.items():
        if not found:
            return arch
    raise ConfigError("no HF equivalent: " + "; ".join(f"as {a}: {', '.join(p)}" for a, p in problems.items()))


def hf_config_from(cfg: ModelConfig, arch: str, n_positions: int, **token_ids):
    """The HF config of ``arch`` for our ``cfg``; ``n_positions``: GPT-2's position table / Llama's maximum."""
    _refuse(export_problems(cfg, arch), arch)
    transformers = require("transformers")
    token_ids = {"bos_token_id": None, "eos_token_id": None, **token_ids}  # not GPT-2's 50256 for other vocabularies
    common = dict(vocab_size=cfg.vocab_size, tie_word_embeddings=cfg.tie_embeddings, **token_ids)
    if arch == "gpt2":
        return transformers.GPT2Config(n_positions=n_positions, n_embd=cfg.d_model, n_layer=cfg.n_layers,
                                       n_head=cfg.n_heads, n_inner=cfg.resolved_d_ff(), activation_function="gelu_new",
                                       layer_norm_epsilon=cfg.norm_eps, resid_pdrop=cfg.dropout,
                                       embd_pdrop=cfg.dropout, attn_pdrop=cfg.dropout, **common)
    return transformers.LlamaConfig(hidden_size=cfg.d_model, intermediate_size=cfg.resolved_d_ff(),
                                    num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads,
                                    num_key_value_heads=cfg.n_kv_heads or cfg.n_heads,
                                    head_dim=cfg.d_model // cfg.n_heads, hidden_act="silu",
                                    max_position_embeddings=n_positions, rms_norm_eps=cfg.norm_eps,
                                    rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta},
                                    attention_bias=cfg.bias, mlp_bias=cfg.bias, attention_dropout=cfg.dropout, **common)


def _refuse(problems: list[str], what: str) -> None:
    """A model the other side cannot compute exactly is the user's choice to fix: one line naming the reasons."""
    if problems:
        raise ConfigError(f"not an exact {what} equivalent: {'; '.join(problems)}")


# ---------------------------------------------------------------------------------------------------------
# Weights


def model_arrays(model: Decoder) -> dict[str, np.ndarray]:
    """Our model's arrays by path (``"stack.groups[0].mixer.w_q.weight"``), as float32 numpy."""
    leaves, _ = jax.tree_util.tree_flatten_with_path(eqx.filter(model, eqx.is_array))
    return {jax.tree_util.keystr(path)[1:]: np.asarray(leaf, np.float32) for path, leaf in leaves}


def skeleton_shapes(skeleton: Decoder) -> dict[str, tuple[int, ...]]:
    """The array paths and shapes of an ``eqx.filter_eval_shape`` skeleton."""
    leaves, _ = jax.tree_util.tree_flatten_with_path(skeleton, is_leaf=lambda x: isinstance(x, jax.ShapeDtypeStruct))
    return {jax.tree_util.keystr(p)[1:]: leaf.shape for p, leaf in leaves if isinstance(leaf, jax.ShapeDtypeStruct)}


def fill_model(skeleton: Decoder, arrays: dict[str, np.ndarray]) -> Decoder:
    """Put ``arrays`` into an ``eqx.filter_eval_shape`` skeleton, checking every path and shape."""
    is_shape = lambda x: isinstance(x, jax.ShapeDtypeStruct)  # noqa: E731
    leaves, treedef = jax.tree_util.tree_flatten_with_path(skeleton, is_leaf=is_shape)
    arrays, filled = dict(arrays), []
    for path, leaf in leaves:
        if is_shape(leaf):
            name = jax.tree_util.keystr(path)[1:]
            if name not in arrays:
                raise KeyError(f"no weights for {name}")
            value = arrays.pop(name)
            if value.shape != leaf.shape:
                raise ValueError(f"{name}: shape {value.shape}, the model needs {leaf.shape}")
            leaf = jnp.asarray(value, leaf.dtype)
        filled.append(leaf)
    if arrays:
        raise KeyError(f"weights the model has no place for: {sorted(arrays)}")
    return jax.tree_util.tree_unflatten(treedef, filled)


def _split_qkv(sd: dict[str, np.ndarray], n_layers: int) -> None:
    """GPT-2's fused ``c_attn`` ([D, 3D]) -> separate q / k / v entries, in place."""
    for i in range(n_layers):
        p = GPT2.layer_prefix.format(i=i) + "attn."
        for kind in ("weight", "bias"):
            for name, part in zip("qkv", np.split(sd.pop(f"{p}c_attn.{kind}"), 3, axis=-1), strict=True):
                sd[f"{p}{name}.{kind}"] = part


def _fuse_qkv(sd: dict[str, np.ndarray], n_layers: int) -> None:
    for i in range(n_layers):
        p = GPT2.layer_prefix.format(i=i) + "attn."
        for kind in ("weight", "bias"):
            sd[f"{p}c_attn.{kind}"] = np.concatenate([sd.pop(f"{p}{name}.{kind}") for name in "qkv"], axis=-1)


def _hf_to_ours(sd: dict[str, np.ndarray], layout: Layout, n_layers: int, wanted: set[str]) -> dict[str, np.ndarray]:
    """Map an HF state dict (consumed) onto our paths; paths our model lacks (a tied head, biases) are skipped."""
    out = {}
    for ours, hf, transposed in layout.model:
        if ours in wanted:
            out[ours] = sd.pop(hf).T if transposed else sd.pop(hf)
    for ours, hf, transposed in layout.layer:
        if STACK + ours in wanted:
            per_layer = [sd.pop(layout.layer_prefix.format(i=i) + hf) for i in range(n_layers)]
            out[STACK + ours] = np.stack([a.T if transposed else a for a in per_layer])
    if sd:
        raise KeyError(f"HF weights our model has no place for: {sorted(sd)}")
    return out


def _ours_to_hf(arrays: dict[str, np.ndarray], layout: Layout, n_layers: int) -> dict[str, np.ndarray]:
    arrays, out = dict(arrays), {}
    for ours, hf, transposed in layout.model:
        if ours in arrays:
            out[hf] = arrays.pop(ours).T if transposed else arrays.pop(ours)
    for ours, hf, transposed in layout.layer:
        if STACK + ours in arrays:
            stacked = arrays.pop(STACK + ours)
            for i in range(n_layers):
                out[layout.layer_prefix.format(i=i) + hf] = stacked[i].T if transposed else stacked[i]
    if arrays:
        raise KeyError(f"arrays with no place in the HF model: {sorted(arrays)}")
    return out


def from_hf(hf_model) -> tuple[Decoder, ModelConfig]:
    """Our Decoder (float32) computing the same logits as an HF ``GPT2LMHeadModel`` or ``LlamaForCausalLM``."""
    arch = architecture(hf_model.config)
    cfg = config_from_hf(hf_model.config)
    skeleton = eqx.filter_eval_shape(build_model, cfg, jax.random.PRNGKey(0))
    # named_parameters lists a tied lm_head once, under the embedding's name.
    sd = {name: p.detach().float().cpu().numpy() for name, p in hf_model.named_parameters()}
    if arch == "gpt2":
        _split_qkv(sd, cfg.n_layers)
    wanted = set(skeleton_shapes(skeleton))
    return fill_model(skeleton, _hf_to_ours(sd, LAYOUTS[arch], cfg.n_layers, wanted)), cfg


def to_hf(model: Decoder, cfg: ModelConfig, arch: str | None = None, n_positions: int | None = None, **token_ids):
    """An HF torch model (float32, eval mode) computing the same logits as our ``model``.

    GPT-2 has no sinusoidal positions, but adding a fixed sinusoid is adding a learned table that holds
    it, so sinusoidal models export as GPT-2 with that table. ``n_positions`` defaults to
    ``cfg.max_seq_len`` (or 1024).
    """
    torch = require("torch")
    transformers = require("transformers")
    arch = arch or export_architecture(cfg)
    n_positions = n_positions or cfg.max_seq_len or 1024
    hf_config = hf_config_from(cfg, arch, n_positions, **token_ids)
    arrays = model_arrays(model)
    if arch == "gpt2" and cfg.positions == "sinusoidal":
        arrays["pos_embed"] = np.asarray(sinusoidal_positions(jnp.arange(n_positions), cfg.d_model), np.float32)
    sd = _ours_to_hf(arrays, LAYOUTS[arch], cfg.n_layers)
    if arch == "gpt2":
        _fuse_qkv(sd, cfg.n_layers)
    model_cls = transformers.GPT2LMHeadModel if arch == "gpt2" else transformers.LlamaForCausalLM
    hf_model = model_cls(hf_config).float().eval()
    missing, unexpected = hf_model.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in sd.items()}, strict=False)
    tied = {"lm_head.weight"} if cfg.tie_embeddings else set()
    if unexpected or set(missing) - tied:
        raise KeyError(f"export to {arch}: missing {sorted(set(missing) - tied)}, unexpected {sorted(unexpected)}")
    return hf_model


def export(model: Decoder, cfg: ModelConfig, folder: str | Path, tokenizer: str | None = None,
           arch: str | None = None) -> Path:
    """Save ``model`` as an HF checkpoint folder (config + safetensors, and our tokenizer as an HF tokenizer)."""
    token_ids = {}
    hf_tok = None
    if tokenizer is not None:
        from chimera_jax.bridge.hf_tokenizer import hf_tokenizer

        hf_tok = hf_tokenizer(tokenizer)
        token_ids = {"bos_token_id": hf_tok.bos_token_id, "eos_token_id": hf_tok.eos_token_id}
    folder = Path(folder)
    to_hf(model, cfg, arch, **token_ids).save_pretrained(folder)
    if hf_tok is not None:
        hf_tok.save_pretrained(folder)
    return folder


def export_run(run_dir: str | Path, folder: str | Path, step: int | None = None, arch: str | None = None) -> Path:
    """Export a trained run directory's newest (or ``step``) checkpoint, with its tokenizer."""
    from chimera_jax.train.checkpoint import load_model

    model, run_cfg = load_model(run_dir, step)
    model_cfg = dataclasses.replace(run_cfg.model, max_seq_len=run_cfg.model.max_seq_len or run_cfg.data.seq_len)
    return export(model, model_cfg, folder, run_cfg.data.tokenizer, arch)
