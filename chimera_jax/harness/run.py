"""lm-eval runs as ``chimera-lm-eval`` makes them: our tasks always found, a chimera checkpoint and an HF model each
through ``lm_eval.simple_evaluate`` with their results saved as lm-eval's CLI saves them, and one summary table.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from chimera_jax.bridge.torch_utils import default_device
from chimera_jax.config import ConfigError
from chimera_jax.errors import UserError
from chimera_jax.harness.model import TASKS_DIR, hf_tokenizer_for_lm_eval
from chimera_jax.hf.spec import PACKAGED_GGUF, pretrained_args
from chimera_jax.markdown import table


def hf_model_args(spec: str, device: str | None) -> dict:
    """lm-eval ``hf`` model arguments for a local HF folder, a ``.gguf`` file or a packaged name, with its
    tokenizer loaded here (``hf_tokenizer_for_lm_eval``: one without an EOS gets ours)."""
    if spec not in PACKAGED_GGUF and not Path(spec).exists():
        raise ConfigError(f"hf: {spec} is not a local HF folder, a .gguf file, or one of {', '.join(PACKAGED_GGUF)}")
    try:
        source, extra = pretrained_args(spec)
    except UserError as err:
        raise ConfigError(f"hf: {err}") from None
    return {"pretrained": source, **extra, "tokenizer": hf_tokenizer_for_lm_eval(spec), "dtype": "float32",
            "device": device or default_device()}


def task_manager(tasks: Sequence[str], include_path: Sequence[str] = ()):
    """lm-eval's ``TaskManager`` over our tasks and ``include_path``, and over lm-eval's own only when a task
    is not among those (indexing its thousands of configs takes a while); unknown task names are an error."""
    from lm_eval.tasks import TaskManager

    paths = [str(TASKS_DIR), *include_path]
    manager = TaskManager(include_path=paths, include_defaults=False)
    if any(t not in manager.all_tasks for t in tasks):
        manager = TaskManager(include_path=paths)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise ConfigError(f"tasks: unknown task(s) {', '.join(unknown)} (list them with: lm-eval ls tasks)")
    return manager


def evaluate(label: str, model: str, model_args: dict, manager, *, tasks: Sequence[str], num_fewshot: int | None,
             limit: float | None, batch_size: int, out: str | None) -> dict:
    """One model (``chimera`` or ``hf``) through ``simple_evaluate`` on ``tasks`` (samples logged), saved under
    ``out`` as lm-eval's CLI saves, in a folder named by ``label``."""
    import lm_eval
    from lm_eval.loggers import EvaluationTracker
    from lm_eval.utils import sanitize_model_name

    tracker = EvaluationTracker(output_path=out)
    results = lm_eval.simple_evaluate(
        model=model, model_args=model_args, tasks=list(tasks), num_fewshot=num_fewshot, limit=limit,
        batch_size=batch_size, log_samples=True, task_manager=manager, evaluation_tracker=tracker)
    tracker.general_config_tracker.model_name = label  # the folder results land in: the model, not a random id
    tracker.general_config_tracker.model_name_sanitized = sanitize_model_name(label)
    samples = results.pop("samples")
    tracker.save_results_aggregated(results=results, samples=samples)
    for task in results["configs"]:
        tracker.save_results_samples(task_name=task, samples=samples[task])
    return {**results, "samples": samples}


def summary_table(runs: dict[str, dict]) -> str:
    """A Markdown table: one row per model and task, every metric lm-eval reported with its stderr."""
    metrics = sorted({key.split(",")[0] for r in runs.values() for task in r["results"].values() for key in task
                      if "," in key and "_stderr" not in key})
    rows = []
    for label, r in runs.items():
        for task, values in r["results"].items():
            cells = []
            for m in metrics:
                key = next((k for k in values if k.split(",")[0] == m), None)
                stderr = values.get(key.replace(m, f"{m}_stderr", 1)) if key else None
                cells.append("" if key is None else f"{values[key]:.4f}" + (
                    f" ± {stderr:.4f}" if isinstance(stderr, float) else ""))
            n = r.get("n-samples", {}).get(task, {}).get("effective", "")
            rows.append([label, task, str(r["n-shot"].get(task, "")), str(n), *cells])
    return table(["model", "task", "n-shot", "examples", *metrics], rows)  # every cell a string: left-aligned
