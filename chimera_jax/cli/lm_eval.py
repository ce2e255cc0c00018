"""Score a chimera checkpoint, and an HF model through lm-eval's own HF backend, on lm-evaluation-harness tasks.

    chimera-lm-eval --checkpoint RUN_DIR [--hf FOLDER|FILE.gguf|smollm2] --tasks T [T ...] [--num-fewshot K]
        [--limit N] [--include-path DIR ...] [--batch-size 8] [--out DIR] [--step N] [--depth L] [--max-length T]
        [--device cpu]
    python scripts/lm_eval.py --checkpoint checkpoints/nano_gpt2 --hf smollm2 --tasks bbc_topic --num-fewshot 3

Each model runs through ``lm_eval.simple_evaluate`` (the checkpoint as the registered ``chimera`` model,
chimera_jax/harness/model.py; ``--hf`` as lm-eval's ``hf`` model on a local folder, a ``.gguf`` file
or a packaged name). lm-eval's table is printed for each, then one table with a row per model and task.
``--out DIR`` saves what lm-eval's own CLI saves: ``DIR/<model>/results_<time>.json`` and the per-example
``samples_<task>_<time>.jsonl``. Our tasks (``bbc_topic``: chimera_jax/harness/tasks/) are always found;
``--include-path`` adds more. ``--limit N`` scores the first N test examples of each task (a fraction
when below 1). An HF tokenizer without an EOS (a byte-level export) gets the one the ``chimera`` model uses,
in memory. When the HF model fails, the table of the models already scored is printed, then one error line
(with ``--out``, their results are already saved). A missing checkpoint, an unknown task or a bad number
stops with one line before any model loads. Needs the eval extra: pip install -e '.[torch,eval]'.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from chimera_jax.cli.args import check_depth, check_run_dir
from chimera_jax.config import ConfigError
from chimera_jax.flags import parse


@dataclass(kw_only=True)
class LMEvalArgs:
    checkpoint: str | None = None  # chimera run directory (holds checkpoints/)
    hf: str | None = None  # also (or instead) an HF model: local folder, .gguf file, or 'smollm2'
    tasks: list[str] = field(default_factory=list)  # lm-eval task or group names
    num_fewshot: int | None = None  # examples in each prompt; None: each task's default
    limit: float | None = None  # score only the first N examples of each task (below 1: a fraction)
    include_path: list[str] = field(default_factory=list)  # more folders of task configs
    batch_size: int = 8  # rows per forward pass (both backends)
    out: str | None = None  # save results and per-example samples here, as lm-eval does
    step: int | None = None  # checkpoint step; None: the newest readable
    depth: int | None = None  # time-indexed models: run the shared block this many times
    max_length: int | None = None  # chimera: longest input scored; None: the model's own
    device: str | None = None  # the HF model's torch device; None: cuda when available


def check(args: LMEvalArgs) -> None:
    """The arguments that can be checked without lm-eval: each problem is a one-line ``ConfigError``."""
    if args.checkpoint is None and args.hf is None:
        raise ConfigError("checkpoint: give --checkpoint RUN_DIR, --hf MODEL, or both")
    if args.checkpoint is not None:
        check_run_dir(args.checkpoint, "checkpoint")
        check_depth(args.checkpoint, args.depth)
    if not args.tasks:
        raise ConfigError("tasks: name at least one task (--tasks bbc_topic)")
    if args.num_fewshot is not None and args.num_fewshot < 0:
        raise ConfigError(f"num_fewshot must be >= 0, got {args.num_fewshot}")
    if args.limit is not None and args.limit <= 0:
        raise ConfigError(f"limit must be positive, got {args.limit}")
    if args.batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {args.batch_size}")
    for folder in args.include_path:
        if not Path(folder).is_dir():
            raise ConfigError(f"include_path: no such folder {folder}")


def main(argv: Sequence[str]) -> dict[str, dict]:
    """Run the command; returns lm-eval's results (with ``samples``) per model label."""
    args = parse(LMEvalArgs, argv)
    check(args)
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        raise ConfigError("lm-eval is not installed: pip install -e '.[torch,eval]'") from None
    from lm_eval.utils import make_table

    from chimera_jax.harness.run import evaluate, hf_model_args, summary_table, task_manager

    models = {}
    if args.checkpoint is not None:
        model_args = {"checkpoint": args.checkpoint, "step": args.step, "depth": args.depth,
                      "max_length": args.max_length}
        models[f"chimera:{args.checkpoint}"] = ("chimera", {k: v for k, v in model_args.items() if v is not None})
    if args.hf is not None:
        models[f"hf:{args.hf}"] = ("hf", hf_model_args(args.hf, args.device))
    manager = task_manager(args.tasks, args.include_path)

    runs = {}
    for label, (model, model_args) in models.items():
        try:
            runs[label] = evaluate(label, model, model_args, manager, tasks=args.tasks, num_fewshot=args.num_fewshot,
                                   limit=args.limit, batch_size=args.batch_size, out=args.out)
        except Exception as err:  # lm-eval or transformers on a foreign model: keep what was already scored
            if model != "hf":
                raise
            if runs:
                print(summary_table(runs))
            raise ConfigError(f"{label}: lm-eval's hf backend failed ({type(err).__name__}: {err}); the table "
                              "above holds the models scored before it (--debug shows the traceback)") from err
        print(f"{label}: limit {args.limit}, num_fewshot {args.num_fewshot}, batch_size {args.batch_size}")
        print(make_table(runs[label]))
    print(summary_table(runs))
    return runs
