"""Perplexity and bits per byte of a torch causal LM under exactly our evaluation protocol.

The windows come from ``chimera_jax.eval.windows`` and the figures from ``chimera_jax.eval.perplexity.summarize``,
the same code the JAX evaluation uses, so the two differ only in the framework that computes the logits.
"""

from __future__ import annotations

import re

import numpy as np

from chimera_jax.bridge.torch_utils import require
from chimera_jax.eval.perplexity import evaluate_with
from chimera_jax.eval.windows import window_batches

_SP_BYTE = re.compile(r"<0x[0-9A-Fa-f]{2}>")  # sentencepiece byte-fallback pieces


def token_byte_lengths(tokenizer) -> np.ndarray:
    """Raw UTF-8 bytes each id of an HF tokenizer stands for (special tokens: 0).

    Decoding ids one at a time would miscount: a byte-level token holding half of a multi-byte
    character decodes to U+FFFD (3 bytes), and sentencepiece drops a leading space. So we read the
    token strings: byte-level BPE (GPT-2, Llama-3, SmolLM2) spells every byte with one character of
    GPT-2's byte alphabet; sentencepiece spells a space as U+2581 and a fallback byte as ``<0xAB>``.
    """
    byte_alphabet = set(require("transformers.convert_slow_tokenizer").bytes_to_unicode().values())
    special = set(tokenizer.all_special_ids)
    pieces = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    plain = [p for i, p in enumerate(pieces) if i not in special and p is not None]
    byte_level = all(ch in byte_alphabet for p in plain for ch in p)
    lengths = np.zeros(len(pieces), np.int64)
    for i, piece in enumerate(pieces):
        if i in special or piece is None:
            continue
        if byte_level:
            lengths[i] = len(piece)
        elif _SP_BYTE.fullmatch(piece):
            lengths[i] = 1
        else:
            lengths[i] = len(piece.replace("\u2581", " ").encode("utf-8"))
    return lengths


def encode_text(tokenizer, text: str) -> np.ndarray:
    """The text as one token stream: no BOS/EOS added, special-token strings in the text kept as plain text."""
    ids = tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    return np.asarray(ids, np.int64)


def evaluate_torch(model, tokens: np.ndarray, **protocol) -> dict:
    """``chimera_jax.eval.perplexity.evaluate`` for a torch model whose forward returns ``.logits``."""
    torch = require("torch")
    device = next(model.parameters()).device

    def batch_nll(inputs, targets, weights) -> float:
        with torch.inference_mode():
            logits = model(input_ids=torch.from_numpy(inputs).long().to(device)).logits.float()
            nll = torch.nn.functional.cross_entropy(logits.flatten(0, 1), torch.from_numpy(targets).long()
                                                    .to(device).flatten(), reduction="none")
            return float((nll * torch.from_numpy(weights).to(device).flatten()).sum())

    return evaluate_with(batch_nll, tokens, **protocol)


def evaluate_hf(spec: str, corpus: str, split: str, *, seq_len: int, stride: int | None = None, batch_size: int = 8,
                max_windows: int | None = None, data_cfg=None, device: str | None = None, dtype: str = "float32",
                repeats: int = 3, progress: bool = False) -> dict:
    """Every figure of seed 000's table for one HF model (or one of our runs, exported) on ``corpus``/``split``.

    The text is ``chimera_jax.data.load_text``'s, tokenized by the model's own tokenizer; tokens/s is
    measured at ``batch_size`` windows of ``seq_len`` (see ``measure``; ``repeats=0`` skips it).
    ``byte_check`` is the tokenizer's byte count of the whole stream over the text's UTF-8 bytes
    (1.0: bits/byte counts exactly the text).
    """
    from chimera_jax.bridge.hf_load import load_hf
    from chimera_jax.bridge.measure import peak_memory, tokens_per_second, torch_forward
    from chimera_jax.data import load_text

    model, tok = load_hf(spec, device, dtype)
    n_positions = getattr(model.config, "n_positions", None)  # learned position tables (GPT-2) cannot extrapolate
    if n_positions and seq_len > n_positions:
        raise ValueError(f"{spec}: seq-len {seq_len} exceeds its {n_positions} learned positions")
    text = load_text(corpus, split, data_cfg)
    tokens = encode_text(tok, text)
    token_bytes = token_byte_lengths(tok)
    tok_name = f"{type(tok).__name__}({len(tok)} ids)"
    result = evaluate_torch(model, tokens, seq_len=seq_len, stride=stride, batch_size=batch_size,
                            token_bytes=token_bytes, max_windows=max_windows, progress=progress, tokenizer=tok_name)
    batch = next(window_batches(tokens, seq_len, seq_len, batch_size))[0]
    tps = tokens_per_second(torch_forward(model, batch), batch.size, repeats) if repeats else None
    memory_mb, memory_kind = peak_memory("torch")
    n_params = sum(p.numel() for p in model.parameters())
    return {**result, "model": spec, "framework": "torch", "corpus": corpus, "split": split,
            "params_total": n_params, "params_active": n_params, "tokens_per_s": tps, "throughput_batch": batch_size,
            "memory_mb": memory_mb, "memory_kind": memory_kind, "device": str(next(model.parameters()).device),
            "byte_check": float(token_bytes[tokens].sum()) / len(text.encode("utf-8"))}
