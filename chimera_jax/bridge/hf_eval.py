"""Perplexity and bits per byte of a torch causal LM, through the project's one evaluation path.

The token stream comes from ``chimera_jax.data.load_stream`` and the loop and figures from
``chimera_jax.eval.perplexity.evaluate``, the code the JAX evaluation uses, so the two differ only in
the framework that computes the logits. One of our run directories is exported to HF on the fly and
scores the very stream its JAX evaluation scores (its own tokenizer); an HF model reads the text with
its own tokenizer through ``HFTokenizer``.
"""

from __future__ import annotations

import numpy as np

from chimera_jax.eval.perplexity import BatchNLL, evaluate
from chimera_jax.eval.protocol import EvalProtocol
from chimera_jax.eval.windows import window_batches
from chimera_jax.optional import require


def torch_batch_nll(model) -> BatchNLL:
    """``batch_nll`` for ``evaluate``: a torch model whose forward returns ``.logits``, on its own device."""
    torch = require("torch")
    device = next(model.parameters()).device

    def batch_nll(inputs: np.ndarray, targets: np.ndarray, weights: np.ndarray) -> float:
        with torch.inference_mode():
            logits = model(input_ids=torch.from_numpy(inputs).long().to(device)).logits.float()
            nll = torch.nn.functional.cross_entropy(logits.flatten(0, 1), torch.from_numpy(targets).long()
                                                    .to(device).flatten(), reduction="none")
            return float((nll * torch.from_numpy(weights).to(device).flatten()).sum())

    return batch_nll


def load_for_eval(spec: str, protocol: EvalProtocol, device: str | None = None, dtype: str = "float32"):
    """``(torch model, resolved protocol, stream)`` for a chimera run directory or an HF model ``spec``."""
    from chimera_jax import data
    from chimera_jax.bridge.hf_load import is_run_dir, load_hf, run_model_as_hf
    from chimera_jax.bridge.torch_utils import default_device
    from chimera_jax.config import ConfigError, DataConfig
    from chimera_jax.hf.tokenizer import as_chimera

    torch = require("torch")
    if protocol.window is not None:
        raise ConfigError("window: the rolling KV cache scores our models in JAX only (chimera-eval), not in torch")
    if is_run_dir(spec):
        from chimera_jax.runs.evaluate import load_run

        run = load_run(spec, protocol)
        model = run_model_as_hf(run.model, run.config).to(device or default_device(), getattr(torch, dtype)).eval()
        return model, run.protocol, run.stream
    model, hf_tok = load_hf(spec, device, dtype)
    tokenizer = as_chimera(hf_tok, spec)
    protocol = protocol.resolved(corpus=None, tokenizer=tokenizer.name, seq_len=None)
    n_positions = getattr(model.config, "n_positions", None)  # learned position tables (GPT-2) cannot extrapolate
    if n_positions and protocol.seq_len > n_positions:
        raise ConfigError(f"seq_len {protocol.seq_len} exceeds {spec}'s {n_positions} learned positions")
    return model, protocol, data.load_stream(protocol.data_config(DataConfig()), protocol.split, tokenizer)


def evaluate_hf(spec: str, protocol: EvalProtocol, *, device: str | None = None, dtype: str = "float32",
                repeats: int = 3, progress: bool = False) -> dict:
    """Every figure of the comparison table (bridge/compare.py) for one model in torch: a chimera run directory
    (exported) or an HF model (hub name, folder, ``.gguf``, ``smollm2``).

    Unset protocol fields are a run's own; an HF model needs ``corpus`` and ``seq_len``. tokens/s is
    measured at ``batch_size`` windows of ``seq_len`` (see ``measure``; ``repeats=0`` skips it).
    """
    from chimera_jax.bridge.measure import peak_memory, tokens_per_second, torch_forward

    model, protocol, stream = load_for_eval(spec, protocol, device, dtype)
    result = evaluate(torch_batch_nll(model), stream, protocol, progress)
    batch = next(window_batches(stream.tokens, protocol.seq_len, protocol.seq_len, protocol.batch_size))[0]
    tps = tokens_per_second(torch_forward(model, batch), batch.size, repeats) if repeats else None
    memory_mb, memory_kind = peak_memory("torch")
    n_params = sum(p.numel() for p in model.parameters())
    return {**result, "model": spec, "framework": "torch", "corpus": protocol.corpus, "split": protocol.split,
            "params_total": n_params, "params_active": n_params, "tokens_per_s": tps,
            "throughput_batch": protocol.batch_size, "memory_mb": memory_mb, "memory_kind": memory_kind,
            "device": str(next(model.parameters()).device), "byte_check": stream.byte_check}
