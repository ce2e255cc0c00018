"""Run a study: every arm of configs/studies/STUDY.yaml at several seeds, then a report with error bars.

    chimera-experiment STUDY [--profile smoke|quick|full] [--seeds N] [--out DIR] [--section.field VALUE ...]
    python scripts/experiment.py time_indexed --profile quick          # ~15 min on 2 CPU cores
    python scripts/experiment.py moe_ablation --profile smoke --seeds 1
    python scripts/experiment.py my_study.yaml --profile full --out runs/mine --data.data_dir /data

STUDY is a name in configs/studies/ or a .yaml path (docs/studies.md describes the file). Each run trains
in OUT/<arm>/seed<k> (OUT: checkpoints/studies/<study>-<profile>); dotted flags override every arm. Every
arm's config is checked before the first one trains. Re-running continues a killed study (a finished run
is not retrained; an unfinished one resumes from its checkpoint) and rebuilds OUT/results.json,
OUT/report.md and the PNGs.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from chimera_jax.flags import parse_known
from chimera_jax.study.spec import load_study, plan


@dataclass
class ExperimentArgs:
    study: str  # a name in configs/studies/ or a .yaml file (positional)
    profile: str = "quick"  # smoke (seconds, for tests), quick (~15 min on 2 CPU cores) or full (the seeds' budgets)
    seeds: int | None = None  # run seeds 0 .. N-1; None: the profile's
    out: str | None = None  # None: checkpoints/studies/<study>-<profile>


def main(argv: Sequence[str]) -> dict:
    args, overrides = parse_known(ExperimentArgs, argv, positional="study")
    study = load_study(args.study)
    out = Path(args.out or Path("checkpoints") / "studies" / f"{study.name}-{args.profile}")
    runs = plan(study, args.profile, args.seeds, out, overrides)  # every config checked before JAX loads

    from chimera_jax.study import plots, report
    from chimera_jax.study.runner import run_study

    records, hf = run_study(study, runs, out)
    results = report.build_results(study, args.profile, records, hf, ["chimera-experiment", *argv])
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "report.md").write_text(report.markdown(study, args.profile, results, plots.draw(study, records, out)))
    print(f"wrote {out / 'report.md'} and {out / 'results.json'}")
    return results
