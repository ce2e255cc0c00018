"""Seed 000's comparison table: our checkpoints (JAX) and HF baselines (torch) under one protocol.

Every model scores the same text (``chimera_jax.data.load_text`` of one corpus and split) with its own
tokenizer, the same windows and the same loss summary. Models are ranked by bits per byte, the one
figure comparable across tokenizers (perplexities per token are not: a tokenizer with longer tokens
has fewer, harder targets). Each model runs in its own process, so peak memory is its own and one
failing model (say, a hub name while offline) is reported without stopping the others.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from dataclasses import dataclass

import numpy as np

from chimera_jax.config import DataConfig


@dataclass(frozen=True)
class Protocol:
    corpus: str = "wikitext-2"
    split: str = "test"
    seq_len: int = 512
    stride: int | None = None  # None: seq_len (non-overlapping windows)
    batch_size: int = 8  # windows per forward pass; tokens/s is measured at this batch
    max_windows: int | None = None
    data_dir: str | None = None
    repeats: int = 3  # timed forward passes for tokens/s
    device: str | None = None  # torch device; JAX uses its default backend

    def describe(self) -> str:
        windows = "non-overlapping" if (self.stride or self.seq_len) == self.seq_len else f"stride {self.stride}"
        limit = (f", first {self.max_windows} windows only (so models with different tokenizers score different "
                 f"prefixes of the text)" if self.max_windows else ", every window")
        return (f"text: chimera_jax.data.load_text({self.corpus!r}, {self.split!r}), tokenized by each model's own "
                f"tokenizer (no BOS/EOS added)\n"
                f"windows: seq-len {self.seq_len}, {windows}{limit}; every target token scored once\n"
                f"normalisation: perplexity = exp(mean nats per scored token); bits/byte = total nats / ln 2 / UTF-8 "
                f"bytes of the scored tokens\n"
                f"speed: tokens/s of forward passes at batch {self.batch_size} x {self.seq_len} after one warm-up; "
                f"memory: accelerator peak allocation, else peak process RSS (one process per model)\n"
                f"ranked by bits per byte (comparable across tokenizers; perplexity is not)")


def trained_on(train_corpus: str, eval_corpus: str) -> str:
    """WikiText-2 and -103 share their validation and test text, so either counts as in-domain for the other."""
    family = lambda c: "wikitext" if c.startswith("wikitext") else c  # noqa: E731
    kind = "in-domain" if family(train_corpus) == family(eval_corpus) else "zero-shot"
    return f"{kind} ({train_corpus})"


def evaluate_run(run_dir: str, protocol: Protocol) -> dict:
    """The table's figures for one of our run directories, evaluated in JAX."""
    import jax

    from chimera_jax.bridge.hf_eval import token_byte_lengths
    from chimera_jax.bridge.hf_tokenizer import hf_tokenizer
    from chimera_jax.bridge.measure import jax_forward, peak_memory, tokens_per_second
    from chimera_jax.data import load_text
    from chimera_jax.eval.perplexity import evaluate
    from chimera_jax.eval.windows import window_batches
    from chimera_jax.models.params import param_report
    from chimera_jax.tokenizer import get_tokenizer
    from chimera_jax.train.checkpoint import load_model

    model, cfg = load_model(run_dir)
    if cfg.model.positions == "learned" and protocol.seq_len > (cfg.model.max_seq_len or 0):
        raise ValueError(f"{run_dir}: seq-len {protocol.seq_len} exceeds its {cfg.model.max_seq_len} learned positions")
    text = load_text(protocol.corpus, protocol.split, DataConfig(corpus=protocol.corpus, data_dir=protocol.data_dir))
    tokens = np.asarray(get_tokenizer(cfg.data.tokenizer).encode(text), np.int64)
    # Bytes per id from the same function as every HF model (our tokenizers' HF twins have identical ids).
    token_bytes = token_byte_lengths(hf_tokenizer(cfg.data.tokenizer))
    result = evaluate(model, tokens, seq_len=protocol.seq_len, stride=protocol.stride, batch_size=protocol.batch_size,
                      token_bytes=token_bytes, max_windows=protocol.max_windows, tokenizer=cfg.data.tokenizer)
    batch = next(window_batches(tokens, protocol.seq_len, protocol.seq_len, protocol.batch_size))[0]
    tps = tokens_per_second(jax_forward(model, batch), batch.size, protocol.repeats) if protocol.repeats else None
    memory_mb, memory_kind = peak_memory("jax")
    params = param_report(model)
    return {**result, "model": run_dir, "framework": "jax", "corpus": protocol.corpus, "split": protocol.split,
            "params_total": params["total"], "params_active": params["active"], "tokens_per_s": tps,
            "throughput_batch": protocol.batch_size, "memory_mb": memory_mb, "memory_kind": memory_kind,
            "device": jax.devices()[0].platform, "trained_on": trained_on(cfg.data.corpus, protocol.corpus),
            "byte_check": float(token_bytes[tokens].sum()) / len(text.encode("utf-8"))}


def evaluate_one(spec: str, protocol: Protocol) -> dict:
    """One model in this process: a run directory in JAX, anything else as an HF model in torch."""
    from chimera_jax.bridge.hf_load import is_run_dir

    if is_run_dir(spec):
        return evaluate_run(spec, protocol)
    from chimera_jax.bridge.hf_eval import evaluate_hf

    result = evaluate_hf(spec, protocol.corpus, protocol.split, seq_len=protocol.seq_len, stride=protocol.stride,
                         batch_size=protocol.batch_size, max_windows=protocol.max_windows,
                         data_cfg=DataConfig(corpus=protocol.corpus, data_dir=protocol.data_dir),
                         device=protocol.device, repeats=protocol.repeats)
    return {**result, "trained_on": "zero-shot (HF pretrained)"}


def evaluate_isolated(spec: str, protocol: Protocol) -> dict:
    """``evaluate_one`` in a fresh Python process; ``{"model": spec, "error": ...}`` when it fails."""
    from chimera_jax.data import hub_offline_reason

    env = dict(os.environ)
    if hub_offline_reason():  # transformers would otherwise retry an unreachable hub for minutes
        env["HF_HUB_OFFLINE"] = "1"
    job = json.dumps({"spec": spec, "protocol": dataclasses.asdict(protocol)})
    proc = subprocess.run([sys.executable, "-m", "chimera_jax.bridge.compare", job], capture_output=True, text=True,
                          env=env)
    lines = proc.stdout.strip().splitlines()
    try:
        return json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):  # the worker died before it could report (killed, out of memory)
        return {"model": spec, "error": (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]}


def rank(results: list[dict]) -> list[dict]:
    """Evaluated models, best (lowest) bits per byte first."""
    return sorted((r for r in results if "error" not in r), key=lambda r: r["bits_per_byte"])


def _millions(n: int) -> str:
    return f"{n / 1e6:,.1f}M"


def markdown_table(results: list[dict]) -> str:
    rows = ["| Rank | Model | Total params | Active params | PPL | Bits/byte | Tok/s | Memory MiB | Trained on |",
            "|---:|---|---:|---:|---:|---:|---:|---:|---|"]
    for i, r in enumerate(rank(results), 1):
        tps = f"{r['tokens_per_s']:,.0f}" if r["tokens_per_s"] else "-"
        rows.append(f"| {i} | {r['model']} | {_millions(r['params_total'])} | {_millions(r['params_active'])} | "
                    f"{r['perplexity']:.2f} | {r['bits_per_byte']:.4f} | {tps} | {r['memory_mb']:,.0f} | "
                    f"{r['trained_on']} |")
    return "\n".join(rows)


def report(results: list[dict], protocol: Protocol) -> str:
    """The protocol, each model's tokenizer and figures' provenance, the table, and what could not be evaluated."""
    lines = ["Protocol", *(f"  {line}" for line in protocol.describe().splitlines()), "Models"]
    for r in rank(results):
        lines.append(f"  {r['model']}: {r['framework']} on {r['device']}, tokenizer {r['protocol']['tokenizer']}, "
                     f"{r['tokens_scored']:,} tokens / {r['bytes_scored']:,} bytes scored, "
                     f"memory = {r['memory_kind']}, byte check {r['byte_check']:.6f}")
    lines += ["", markdown_table(results)]
    failed = [f"  {r['model']}: {' '.join(r['error'].split())[:300]}" for r in results if "error" in r]
    lines += ["", "Not evaluated:", *failed] if failed else []
    return "\n".join(lines)


if __name__ == "__main__":  # the worker evaluate_isolated starts: one model, result (or error) as the last stdout line
    job = json.loads(sys.argv[1])
    try:
        print(json.dumps(evaluate_one(job["spec"], Protocol(**job["protocol"]))))
    except Exception as err:  # noqa: BLE001 - any failure is reported in the table, not raised
        print(json.dumps({"model": job["spec"], "error": f"{type(err).__name__}: {err}"}))
        raise
