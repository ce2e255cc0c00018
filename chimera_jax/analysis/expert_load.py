"""An MoE run's per-layer expert load: read from its metrics or routed through its checkpoint, and drawn.

``loads_from_metrics`` reads the training batches' ``aux/expert_load`` from metrics.jsonl; ``loads_from_checkpoint``
routes validation windows through the model; ``plot`` draws one bar chart per MoE layer (and, given the history,
the shares over the whole run). Used by ``chimera-plot-experts`` and the study plots.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import equinox as eqx  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from chimera_jax.config import ConfigError, RunConfig, from_yaml  # noqa: E402
from chimera_jax.train.metrics import read_metrics  # noqa: E402

LOAD_KEY = "aux/expert_load"


def loads_from_metrics(run_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(steps [S], loads [S, layers, E])`` of every logged training step."""
    lines = [line for line in read_metrics(run_dir, split="train") if LOAD_KEY in line]
    if not lines:
        raise ConfigError(f"checkpoint: no {LOAD_KEY} in {run_dir / 'metrics.jsonl'}: not an MoE run, or nothing "
                          "logged yet")
    return np.array([line["step"] for line in lines]), np.array([line[LOAD_KEY] for line in lines])


def loads_from_checkpoint(run_dir: Path, batches: int) -> tuple[np.ndarray, RunConfig, int]:
    """Mean per-layer load ``[layers, E]`` over validation windows, the run's config and its step."""
    from chimera_jax import data
    from chimera_jax.eval.windows import window_batches
    from chimera_jax.train.checkpoint import Checkpointer, load_model

    model, cfg = load_model(run_dir)
    with Checkpointer(run_dir, keep=None, read_only=True) as ckpt:
        step = ckpt.candidates()[0]
    route = eqx.filter_jit(lambda m, tokens: m(tokens, inference=True)[1]["expert_load"])
    tokens = data.load_stream(cfg.data, "validation").tokens
    loads = [np.asarray(route(model, inputs)) for inputs, _, _ in window_batches(
        tokens, cfg.data.seq_len, cfg.data.seq_len, cfg.train.batch_size, batches * cfg.train.batch_size)]
    return np.mean(loads, axis=0), cfg, step


def layer_names(cfg: RunConfig | None, n: int) -> list[str]:
    """MoE layer j is decoder layer j * every + every - 1 (the last of each group, see models/builder.py)."""
    every = cfg.model.moe.every if cfg is not None else 1
    return [f"layer {j * every + every - 1}" for j in range(n)]


def plot(loads: np.ndarray, names: list[str], title: str,
         history: tuple[np.ndarray, np.ndarray] | None) -> plt.Figure:
    n_layers, n_experts = loads.shape
    rows = 2 if history is not None else 1
    fig, axes = plt.subplots(rows, n_layers, figsize=(3.2 * n_layers, 2.8 * rows), squeeze=False,
                             sharey="row", constrained_layout=True)
    for j in range(n_layers):
        ax = axes[0, j]
        load = loads[j]
        ax.bar(np.arange(n_experts), load, color="tab:blue")
        ax.axhline(1.0 / n_experts, color="k", ls="--", lw=1)
        entropy = -np.sum(load[load > 0] * np.log(load[load > 0]))
        spread = f"max/min {load.max() / load.min():.1f}" if load.min() > 0 else f"{np.sum(load == 0)} idle"
        ax.set_title(f"{names[j]}\nentropy {entropy:.2f}/{np.log(n_experts):.2f} nats, {spread}", fontsize=9)
        ax.set_xlabel("expert")
        ax.set_xticks(np.arange(n_experts))
        if j == 0:
            ax.set_ylabel("share of assignments")
        if history is not None:
            steps, all_loads = history
            image = axes[1, j].imshow(all_loads[:, j].T, aspect="auto", origin="lower", cmap="viridis",
                                      extent=(steps[0], steps[-1], -0.5, n_experts - 0.5), vmin=0)
            axes[1, j].set_xlabel("step")
            if j == 0:
                axes[1, j].set_ylabel("expert")
    if history is not None:
        fig.colorbar(image, ax=axes[1, :].tolist(), label="share")
    fig.suptitle(title)
    return fig


def run_figure(run_dir: Path, *, from_checkpoint: bool = False, batches: int = 4,
               step: int | None = None) -> plt.Figure:
    """The expert-load figure of the run in ``run_dir``: from its metrics at the logged ``step`` (None: the last),
    with the whole run's history below; or, ``from_checkpoint``, routed over ``batches`` validation batches."""
    if from_checkpoint:
        loads, cfg, ckpt_step = loads_from_checkpoint(run_dir, batches)
        history, source = None, f"checkpoint step {ckpt_step}, {batches} validation batches"
    else:
        config_file = run_dir / "config.yaml"
        cfg = from_yaml(config_file.read_text()) if config_file.exists() else None
        steps, all_loads = loads_from_metrics(run_dir)
        i = len(steps) - 1 if step is None else int(np.searchsorted(steps, step))
        if i >= len(steps) or (step is not None and steps[i] != step):
            raise ConfigError(f"step: {step} was not logged; logged steps: {steps[0]}..{steps[-1]}")
        history = (steps, all_loads) if len(steps) > 1 else None
        loads, source = all_loads[i], f"training batch at step {steps[i]}"
    name = cfg.name if cfg is not None else run_dir.name
    return plot(loads, layer_names(cfg, len(loads)), f"{name}: expert load per MoE layer ({source})", history)


def save_figure(fig: plt.Figure, path: Path) -> Path:
    """Write ``fig`` as a PNG and free it."""
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
