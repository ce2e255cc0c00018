"""Running a study: every arm at every seed in sequence, each in its own run directory, resumable.

A run's record is written in two stages, so a study killed at any point resumes where it stopped:
``train.json`` right after ``train`` returns (its summary, wall time, the step's memory, the config), then
``run.json`` once the extra evaluations are done. A run with ``run.json`` is not touched again; one with
``train.json`` only is evaluated; one with neither goes through ``train``, which continues from the run
directory's newest checkpoint. A finished run trained under another config is an error, not a silent mix.

Peak memory is the compiled train step's own ``memory_analysis`` (arguments + outputs - donated buffers
+ temporaries: the bench's measure), once per arm (it depends on shapes,
not on the seed), so it is comparable across arms on any device, unlike the process's resident set.

While a study runs, XLA's persistent compilation cache is on, in OUT/xla_cache: every seed of an arm, and
a resumed run, compiles the same programs, so only the first compile of each is paid.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import jax
from tqdm.auto import tqdm

from chimera_jax.bench.flops import forward_flops_per_token, train_flops_per_token
from chimera_jax.config import ConfigError, RunConfig, flat_fields, from_yaml, to_yaml
from chimera_jax.eval.protocol import EvalProtocol
from chimera_jax.study.spec import Evaluation, Run, Study
from chimera_jax.train.checkpoint import load_run_config
from chimera_jax.train.loop import format_summary, train
from chimera_jax.train.metrics import read_metrics

TRAIN_RECORD, RUN_RECORD = "train.json", "run.json"
FIGURES = ("loss", "perplexity", "bits_per_byte")


def read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def write_json(path: Path, obj) -> None:
    """Written whole, then renamed: a killed process never leaves half a record."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    tmp.replace(path)


def step_memory_mib(cfg: RunConfig) -> float:
    """The compiled train step's peak memory in MiB on the run's mesh (train/step.py ``step_memory``: compiled for
    shapes alone, nothing allocated or run)."""
    from chimera_jax.config import resolve_config
    from chimera_jax.tokenizer import VOCAB_SIZES
    from chimera_jax.train.mesh import make_mesh
    from chimera_jax.train.step import step_memory

    cfg = resolve_config(cfg, VOCAB_SIZES[cfg.data.tokenizer])
    return step_memory(cfg, make_mesh(cfg))["total"] / 2**20


def check_same_config(record: dict, cfg: RunConfig, run_dir: Path) -> None:
    """The run's recorded config, parsed (so fields added since take their defaults), is ``cfg``."""
    old, new = flat_fields(from_yaml(record["config"])), flat_fields(cfg)
    diff = next((f"{k}: {old.get(k)!r} now {new.get(k)!r}" for k in sorted(old.keys() | new.keys())
                 if old.get(k) != new.get(k)), None)
    if diff is not None:
        raise ConfigError(f"{run_dir} was trained under another config ({diff}): use a fresh --out")


def train_run(run: Run, memory: dict[str, float]) -> dict:
    """Train one run (or continue it) and write its ``train.json``."""
    cfg = run.config
    if run.arm not in memory:
        memory[run.arm] = step_memory_mib(cfg)
    start = time.perf_counter()
    summary = train(cfg)
    wall = time.perf_counter() - start
    tqdm.write(format_summary(summary))
    curve = read_metrics(cfg.run_dir, split="validation")
    model, seq_len = load_run_config(cfg.run_dir).model, cfg.data.seq_len  # resolved: the vocabulary is known
    record = {
        "arm": run.arm, "seed": run.seed, **summary, "wall_s": wall, "step_memory_mib": memory[run.arm],
        # model FLOPs (bench/flops.py): the whole training (at the mean drawn depth), and one token's forward pass
        "train_flops": train_flops_per_token(model, seq_len) * cfg.train.steps * cfg.train.batch_size * seq_len,
        "flops_per_token": sum(forward_flops_per_token(model, seq_len).values()),
        "val_curve": {str(line["step"]): line["loss"] for line in curve},
        "config": to_yaml(cfg),
    }
    write_json(cfg.run_dir / TRAIN_RECORD, record)
    return record


def extra_evaluations(cfg: RunConfig, ev: Evaluation) -> dict:
    """``{"corpus:NAME": figures, "depth:D": figures}``: the run on other corpora, and a time-indexed run at
    other depths on the loop's validation windows (so its trained depth reproduces ``val_loss``)."""
    from chimera_jax.models.time_indexed import with_depth
    from chimera_jax.runs.evaluate import evaluate_checkpoint, evaluate_loaded, load_run

    tc = cfg.train
    out = {}
    for corpus in ev.corpora:
        tqdm.write(f"{cfg.run_dir}: evaluating on {corpus}/{ev.split}")  # each takes seconds to minutes
        protocol = EvalProtocol(corpus=corpus, split=ev.split, max_windows=ev.max_windows, batch_size=tc.batch_size)
        result = evaluate_checkpoint(cfg.run_dir, protocol)
        out[f"corpus:{corpus}"] = {k: result[k] for k in (*FIGURES, "tokens_scored", "bytes_scored")}
    if cfg.model.time.enabled:
        validation = EvalProtocol(split="validation", batch_size=tc.batch_size,
                                  max_windows=tc.eval_batches * tc.batch_size)
        found = depths(cfg.model.n_layers, ev.depths, ev.every_depth_to)
        tqdm.write(f"{cfg.run_dir}: evaluating at depths {', '.join(map(str, found))}")
        run = load_run(cfg.run_dir, validation)  # read once, run at each depth
        for depth in found:
            result = evaluate_loaded(dataclasses.replace(run, depth=depth, model=with_depth(run.model, depth)))
            out[f"depth:{depth}"] = {**{k: result[k] for k in FIGURES},
                                     "flops_per_token": sum(forward_flops_per_token(run.config.model,
                                                                                    cfg.data.seq_len, depth).values())}
    return out


def depths(n_layers: int, factors: list[float], every_to: float | None = None) -> list[int]:
    """The distinct depths ``round(f * n_layers)`` (at least 1), and with ``every_to`` every depth from 1 to
    ``round(every_to * n_layers)``, in increasing order."""
    every = range(1, round(every_to * n_layers) + 1) if every_to is not None else ()
    return sorted({max(1, round(f * n_layers)) for f in factors} | set(every))


def finish_run(run: Run, ev: Evaluation, memory: dict[str, float]) -> dict:
    """The run's full record: read back when done, else trained and/or evaluated now."""
    run_dir = run.run_dir
    done = read_json(run_dir / RUN_RECORD)
    if done is not None:
        check_same_config(done, run.config, run_dir)
        return done
    record = read_json(run_dir / TRAIN_RECORD)
    if record is None:
        record = train_run(run, memory)
    else:
        check_same_config(record, run.config, run_dir)
    record["evals"] = extra_evaluations(run.config, ev)
    write_json(run_dir / RUN_RECORD, record)
    return record


def hf_baselines(study: Study, cfg: RunConfig, out: Path) -> list[dict]:
    """Each HF baseline on each evaluation corpus, through the bridge in its own process (a failure is
    reported, not raised), at the baseline arm's window length; cached in OUT/hf/."""
    from chimera_jax.bridge.compare import evaluate_isolated

    ev = study.evaluation
    results = []
    pairs = [(spec, corpus) for spec in ev.hf_baselines for corpus in ev.corpora]
    bar = tqdm(pairs, desc="HF baselines", unit="eval", dynamic_ncols=True, disable=not pairs)
    for spec, corpus in bar:
        path = out / "hf" / f"{Path(spec).name}-{corpus}.json"
        result = read_json(path)
        if result is None:
            bar.set_postfix_str(f"{spec} on {corpus}/{ev.split}")  # a model load and a pass: tens of seconds
            protocol = EvalProtocol(corpus=corpus, split=ev.split, seq_len=cfg.data.seq_len,
                                    max_windows=ev.max_windows, batch_size=cfg.train.batch_size,
                                    data_dir=cfg.data.data_dir)
            result = {**evaluate_isolated(spec, protocol, repeats=0), "corpus": corpus}
            path.parent.mkdir(parents=True, exist_ok=True)
            if "error" not in result:
                write_json(path, result)
            else:
                tqdm.write(f"HF baseline {spec} on {corpus}: {result['error']}")
        results.append(result)
    return results


@contextmanager
def compilation_cache(path: Path) -> Iterator[None]:
    """XLA's persistent compilation cache in ``path`` for the duration, then the process's settings back."""
    from jax.experimental.compilation_cache import compilation_cache as cc

    settings = {"jax_compilation_cache_dir": str(path), "jax_persistent_cache_min_compile_time_secs": 0.5}
    before = {name: getattr(jax.config, name) for name in settings}
    for name, value in settings.items():
        jax.config.update(name, value)
    cc.reset_cache()  # the process decides at its first compile whether it caches: decide again
    try:
        yield
    finally:
        for name, value in before.items():
            jax.config.update(name, value)
        cc.reset_cache()


def run_study(study: Study, runs: list[Run], out: Path) -> tuple[list[dict], list[dict]]:
    """Every run's record (in ``runs`` order) and the HF baselines' results."""
    memory: dict[str, float] = {}
    records = []
    with compilation_cache(out / "xla_cache"):
        for run in tqdm(runs, desc=study.name, unit="run", dynamic_ncols=True):
            records.append(finish_run(run, study.evaluation, memory))
    baseline_cfg = next(r.config for r in runs if r.arm == study.baseline)
    return records, hf_baselines(study, baseline_cfg, out)
