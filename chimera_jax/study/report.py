"""A study's results.json (every arm, seed and metric, with the summaries over seeds) and report.md."""

from __future__ import annotations

import shlex
from pathlib import Path

from chimera_jax.markdown import table
from chimera_jax.study.spec import Study
from chimera_jax.study.stats import as_dict, paired_difference, summarise

# (run record key, column name, format): the per-arm table, in order.
METRICS = (
    ("params", "params", ",.0f"),
    ("active_params", "active", ",.0f"),
    ("val_loss", "val loss", ".4f"),
    ("val_perplexity", "ppl", ".2f"),
    ("val_bits_per_byte", "bits/byte", ".4f"),
    ("tokens_per_s", "tok/s", ",.0f"),
    ("ms_per_step", "ms/step", ".1f"),
    ("step_memory_mib", "step MiB", ".1f"),
    ("wall_s", "wall s", ".1f"),
    ("train_flops", "train FLOPs", ".3g"),
)
COMPARED = ("val_loss", "val_bits_per_byte")  # differences from the baseline, besides every extra evaluation's


def run_metrics(record: dict) -> dict[str, float | None]:
    """One run's metrics, flat: the table's, then ``corpus:NAME/loss``, ``depth:D/bits_per_byte`` ..."""
    flat = {key: record.get(key) for key, _, _ in METRICS}
    for name, figures in record.get("evals", {}).items():
        flat.update({f"{name}/{k}": v for k, v in figures.items() if k in ("loss", "bits_per_byte")})
    return flat


def compared_metrics(records: list[dict]) -> list[str]:
    names = {name for r in records for name in run_metrics(r)}
    return [*COMPARED, *sorted(n for n in names if "/" in n)]


def build_results(study: Study, profile: str, records: list[dict], hf: list[dict], command: list[str]) -> dict:
    """Everything the report says, as data: the runs, each arm's summaries, each arm's differences."""
    arms = [a.name for a in study.arms]
    by_arm = {a: {r["seed"]: run_metrics(r) for r in records if r["arm"] == a} for a in arms}
    names = list(dict.fromkeys(name for r in records for name in run_metrics(r)))
    summaries = {a: {m: as_dict(summarise([v[m] for v in by_arm[a].values() if m in v])) for m in names}
                 for a in arms}
    base = by_arm[study.baseline]
    differences = {a: {m: as_dict(paired_difference({s: v.get(m) for s, v in by_arm[a].items()},
                                                    {s: v.get(m) for s, v in base.items()}))
                       for m in compared_metrics(records)}
                   for a in arms if a != study.baseline}
    return {"study": study.name, "profile": profile, "command": command, "description": study.description,
            "baseline": study.baseline, "seeds": sorted({r["seed"] for r in records}),
            "arms": summaries, "differences": differences, "hf_baselines": hf, "runs": records}


def fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def mean_std(summary: dict | None, spec: str) -> str:
    if summary is None:
        return "n/a"
    spread = summary["std"] is not None and summary["std"] > 0  # parameter counts do not vary with the seed
    return fmt(summary["mean"], spec) + (f" ± {fmt(summary['std'], spec)}" if spread else "")


def protocol_lines(study: Study, profile: str, results: dict) -> list[str]:
    runs = results["runs"]
    base = next(r for r in runs if r["arm"] == study.baseline)
    from chimera_jax.config import from_yaml

    cfg = from_yaml(base["config"])
    d, t, o = cfg.data, cfg.train, cfg.optim
    corpus = base["corpus"] if base["corpus"] == d.corpus else f"{base['corpus']} (fallback for {d.corpus})"
    lines = [
        f"- command: `{shlex.join(results['command'])}`",
        f"- profile `{profile}`, seeds {', '.join(map(str, results['seeds']))} (`train.seed`: the initialisation and "
        "the order of the training windows; seed k of every arm sees the same batches when the data settings agree)",
        f"- shared overrides: `{' '.join(study.shared) or 'none'}`; profile overrides: "
        f"`{' '.join(study.profile(profile).overrides) or 'none'}`",
        f"- the baseline arm's training: {corpus}, {d.tokenizer} tokenizer, seq_len {d.seq_len}, batch {t.batch_size}"
        f" x {t.grad_accum}, {t.steps} steps, lr {o.lr:g} (warmup {o.warmup_steps}, cosine to {o.min_lr_ratio:g}x), "
        f"{t.precision}",
        f"- val loss / ppl / bits/byte: the training loop's last validation, mean nats per token over the first "
        f"eval_batches x batch_size ({t.eval_batches} x {t.batch_size} for the baseline) non-overlapping seq_len "
        "windows of the validation split; bits/byte = total nats / ln 2 / bytes of the text scored",
        "- tok/s and ms/step: training steps after the first (compiling) one; step MiB: the compiled train step's "
        "memory_analysis (arguments + outputs - donated + temporaries), once per arm; wall s: the whole `train` "
        "call (data, compile, steps, validations, checkpoints) of the last session that trained the run",
        "- differences: arm - baseline paired by seed, mean and Student-t 95% interval over seeds; \"exceeds "
        "spread\": |mean difference| is larger than both arms' seed-to-seed std. With one seed: n/a",
        "- train FLOPs: model FLOPs (matrix products, 3x the forward: chimera_jax/bench/flops.py) per token x "
        "steps x batch x seq_len; an arm trained at drawn depths counts their mean",
    ]
    ev = study.evaluation
    if ev.corpora:
        lines.append(f"- extra corpora: {', '.join(ev.corpora)}, {ev.split} split, the first {ev.max_windows} "
                     "non-overlapping windows of each run's seq_len, each model with its own tokenizer")
    if ev.depths or ev.every_depth_to:
        at = ([f"round(f x n_layers) layers, f in {ev.depths}"] if ev.depths else []) + (
            [f"every depth from 1 to round({ev.every_depth_to:g} x n_layers)"] if ev.every_depth_to else [])
        lines.append(f"- time-indexed arms re-run at {' and '.join(at)}, on the loop's validation windows (the "
                     "trained depth reproduces val loss)")
    return lines


def arm_rows(study: Study, results: dict) -> list[list[str]]:
    rows = []
    for arm in study.arms:
        s = results["arms"][arm.name]
        rows.append([arm.name, arm.preset, " ".join(arm.overrides) or "-",
                     *(mean_std(s.get(key), spec) for key, _, spec in METRICS)])
    return rows


def difference_rows(results: dict) -> list[list[str]]:
    rows = []
    for arm, metrics in results["differences"].items():
        for metric, d in metrics.items():
            if d is None:
                continue
            ci = "n/a" if d["low"] is None else f"[{d['low']:+.4f}, {d['high']:+.4f}]"
            yes_no = {None: "n/a", True: "yes", False: "no"}
            rows.append([arm, metric, f"{d['mean']:+.4f}", ci, yes_no[d["excludes_zero"]],
                         yes_no[d["exceeds_spread"]], str(d["n"])])
    return rows


def eval_order(name: str) -> tuple[str, float, str]:
    """``depth:3`` before ``depth:12``: an evaluation's kind, then its number when it has one."""
    kind, _, value = name.partition(":")
    try:
        return kind, float(value), ""
    except ValueError:
        return kind, 0.0, value


def eval_rows(study: Study, results: dict) -> list[list[str]]:
    rows = []
    for arm in study.arms:
        s = results["arms"][arm.name]
        names = sorted({k.rsplit("/", 1)[0] for k in s if "/" in k}, key=eval_order)
        for name in names:
            if s.get(f"{name}/loss") is None:  # an evaluation this arm does not have (depths: time-indexed only)
                continue
            rows.append([arm.name, name, mean_std(s.get(f"{name}/loss"), ".4f"),
                         mean_std(s.get(f"{name}/bits_per_byte"), ".4f")])
    return rows


def depth_table(study: Study, results: dict) -> str | None:
    """Validation loss against depth, one row per time-indexed arm, one column per depth (mean ± std)."""
    runs = {a.name: results["arms"][a.name] for a in study.arms}
    found = sorted({int(k[6:].split("/")[0]) for s in runs.values() for k in s if k.startswith("depth:")})
    if not found:
        return None
    rows = [[name, *(mean_std(s.get(f"depth:{d}/loss"), ".4f") for d in found)]
            for name, s in runs.items() if any((s.get(f"depth:{d}/loss") or {}).get("mean") is not None for d in found)]
    return table(["arm", *(str(d) for d in found)], rows)


def hf_rows(hf: list[dict]) -> list[list[str]]:
    return [[r["model"], r.get("corpus", "?"), r.get("error", "")[:80] or fmt(r.get("loss"), ".4f"),
             fmt(r.get("bits_per_byte"), ".4f"), fmt(r.get("params_total"), ",.0f")] for r in hf]


def markdown(study: Study, profile: str, results: dict, plots: list[Path]) -> str:
    lines = [f"# Study `{study.name}` (profile `{profile}`)", "", study.description.strip(), "", "## Protocol", "",
             *protocol_lines(study, profile, results), "",
             f"## Results: mean ± std over seeds (baseline `{study.baseline}`)", "",
             table(["arm", "preset", "overrides", *(name for _, name, _ in METRICS)], arm_rows(study, results)), "",
             "## Difference from the baseline", "",
             table(["arm", "metric", "Δ mean", "95% interval", "excludes 0", "exceeds spread", "seeds"],
                   difference_rows(results))]
    by_depth = depth_table(study, results)
    if by_depth:
        lines += ["", "## Validation loss (nats/token) against the layers run: mean ± std over seeds", "", by_depth]
    evals = eval_rows(study, results)
    if evals:
        lines += ["", "## Extra evaluations: mean ± std over seeds", "",
                  table(["arm", "evaluation", "loss (nats/token)", "bits/byte"], evals)]
    if results["hf_baselines"]:
        lines += ["", "## HF baselines (torch, through the bridge; same text and windows, own tokenizer)", "",
                  table(["model", "corpus", "loss (own tokens)", "bits/byte", "params"],
                        hf_rows(results["hf_baselines"]))]
    if plots:
        lines += ["", "## Plots", "", *(f"![{p.stem}]({p.name})" for p in plots)]
    return "\n".join(lines) + "\n"
