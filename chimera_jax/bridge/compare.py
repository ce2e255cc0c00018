"""The comparison table: our checkpoints (JAX) and HF baselines (torch) under one protocol.

Every model scores the same text (one corpus and split, through ``chimera_jax.data.load_stream``) with its
own tokenizer, the same windows and the same loop (``chimera_jax.eval.perplexity.evaluate``). Models are
ranked by bits per byte, the one figure comparable across tokenizers (perplexities per token are not: a
tokenizer with longer tokens has fewer, harder targets). Each model runs in its own process, so peak memory
is its own and one failing model (say, a hub name while offline) is reported without stopping the others.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

from chimera_jax.eval.protocol import EvalProtocol
from chimera_jax.markdown import table


def trained_on(train_corpus: str, eval_corpus: str) -> str:
    """WikiText-2 and -103 share their validation and test text, so either counts as in-domain for the other."""
    family = lambda c: "wikitext" if c.startswith("wikitext") else c  # noqa: E731
    kind = "in-domain" if family(train_corpus) == family(eval_corpus) else "zero-shot"
    return f"{kind} ({train_corpus})"


def evaluate_run(run_dir: str, protocol: EvalProtocol, repeats: int = 3) -> dict:
    """The table's figures for one of our run directories, evaluated in JAX (``chimera_jax.runs.evaluate``)."""
    import jax

    from chimera_jax.bridge.measure import jax_forward, peak_memory, tokens_per_second
    from chimera_jax.eval.windows import window_batches
    from chimera_jax.models.params import param_report
    from chimera_jax.runs.evaluate import evaluate_loaded, load_run

    run = load_run(run_dir, protocol)
    result = evaluate_loaded(run)
    p = run.protocol
    batch = next(window_batches(run.stream.tokens, p.seq_len, p.seq_len, p.batch_size))[0]
    tps = tokens_per_second(jax_forward(run.model, batch), batch.size, repeats) if repeats else None
    memory_mb, memory_kind = peak_memory("jax")
    params = param_report(run.model)
    return {**result, "model": run_dir, "framework": "jax", "params_total": params["total"],
            "params_active": params["active"], "tokens_per_s": tps, "throughput_batch": p.batch_size,
            "memory_mb": memory_mb, "memory_kind": memory_kind, "device": jax.devices()[0].platform,
            "trained_on": trained_on(run.config.data.corpus, p.corpus), "byte_check": run.stream.byte_check}


def evaluate_one(spec: str, protocol: EvalProtocol, repeats: int = 3, device: str | None = None) -> dict:
    """One model in this process: a run directory in JAX, anything else as an HF model in torch."""
    from chimera_jax.bridge.hf_load import is_run_dir

    if is_run_dir(spec):
        return evaluate_run(spec, protocol, repeats)
    from chimera_jax.bridge.hf_eval import evaluate_hf

    return {**evaluate_hf(spec, protocol, device=device, repeats=repeats), "trained_on": "zero-shot (HF pretrained)"}


def evaluate_isolated(spec: str, protocol: EvalProtocol, *, repeats: int = 3, device: str | None = None) -> dict:
    """``evaluate_one`` in a fresh Python process; ``{"model": spec, "error": ...}`` when it fails.

    ``repeats`` (timed forward passes for tokens/s, 0 skips) and ``device`` (torch's; JAX uses its default
    backend) change how a model is run, not what it scores, so they are not part of the protocol.
    """
    from chimera_jax.data import hub_offline_reason

    env = dict(os.environ)
    if hub_offline_reason():  # transformers would otherwise retry an unreachable hub for minutes
        env["HF_HUB_OFFLINE"] = "1"
    job = json.dumps({"spec": spec, "protocol": dataclasses.asdict(protocol), "repeats": repeats, "device": device})
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
    """The ranked models; the numbers are formatted here, so the columns they fill are named right-aligned."""
    rows = [[i, r["model"], _millions(r["params_total"]), _millions(r["params_active"]), f"{r['perplexity']:.2f}",
             f"{r['bits_per_byte']:.4f}", f"{r['tokens_per_s']:,.0f}" if r["tokens_per_s"] else "-",
             f"{r['memory_mb']:,.0f}", r["trained_on"]] for i, r in enumerate(rank(results), 1)]
    return table(["Rank", "Model", "Total params", "Active params", "PPL", "Bits/byte", "Tok/s", "Memory MiB",
                  "Trained on"], rows, align="rlrrrrrrl")


def report(results: list[dict], protocol: EvalProtocol) -> str:
    """The protocol, each model's tokenizer and figures' provenance, the table, and what could not be evaluated."""
    speed = (f"speed: tokens/s of forward passes at batch {protocol.batch_size} x seq-len after one warm-up; memory: "
             f"accelerator peak allocation, else peak process RSS (one process per model)")
    ranked = "ranked by bits per byte (comparable across tokenizers; perplexity is not)"
    lines = ["Protocol", *(f"  {line}" for line in [*protocol.describe().splitlines(), speed, ranked]), "Models"]
    for r in rank(results):
        p = r["protocol"]
        lines.append(f"  {r['model']}: {r['framework']} on {r['device']}, tokenizer {p['tokenizer']}, seq-len "
                     f"{p['seq_len']}, {r['tokens_scored']:,} tokens / {r['bytes_scored']:,} bytes scored, "
                     f"memory = {r['memory_kind']}, byte check {r['byte_check']:.6f}")
    lines += ["", markdown_table(results)]
    failed = [f"  {r['model']}: {' '.join(r['error'].split())[:300]}" for r in results if "error" in r]
    lines += ["", "Not evaluated:", *failed] if failed else []
    return "\n".join(lines)


if __name__ == "__main__":  # the worker evaluate_isolated starts: one model, result (or error) as the last stdout line
    job = json.loads(sys.argv[1])
    try:
        print(json.dumps(evaluate_one(job["spec"], EvalProtocol(**job["protocol"]), job["repeats"], job["device"])))
    except Exception as err:  # noqa: BLE001 - any failure is reported in the table, not raised
        print(json.dumps({"model": job["spec"], "error": f"{type(err).__name__}: {err}"}))
        raise
