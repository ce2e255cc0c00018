"""A study's PNGs, drawn from its run records (and, for expert loads and gates, its run directories).

- ``curves``: validation loss against step, mean over seeds with a band of ± one std
- ``params``: final validation loss against total and active parameters, error bars over seeds
- ``wall``: validation loss against training time (step x the run's mean ms/step: compile, evaluation and
  checkpoints excluded, so arms compare by their step cost)
- ``experts``: each MoE arm's expert load per layer (seed 0's metrics; chimera_jax/analysis/expert_load.py)
- ``gates``: each time-indexed arm's mean modulation gate per layer, one line per shared weight (seed 0)
- ``depth``: each time-indexed arm's validation loss at the depths it was re-run at
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from chimera_jax.analysis.expert_load import save_figure  # noqa: E402
from chimera_jax.config import from_yaml  # noqa: E402
from chimera_jax.study.spec import Study  # noqa: E402


def by_arm(study: Study, records: list[dict]) -> dict[str, list[dict]]:
    return {a.name: sorted((r for r in records if r["arm"] == a.name), key=lambda r: r["seed"]) for a in study.arms}


def curves(runs: list[dict]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(steps, mean, std)`` over the steps every seed evaluated."""
    steps = sorted(set.intersection(*(set(map(int, r["val_curve"])) for r in runs)))
    losses = np.array([[r["val_curve"][str(s)] for s in steps] for r in runs])
    return np.array(steps), losses.mean(axis=0), losses.std(axis=0, ddof=1) if len(runs) > 1 else 0 * losses[0]


def curve_plot(arms: dict[str, list[dict]], path: Path, wall: bool) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4.5), constrained_layout=True)
    for name, runs in arms.items():
        steps, mean, std = curves(runs)
        x = steps * np.mean([r["ms_per_step"] or np.nan for r in runs]) / 1000 if wall else steps
        ax.plot(x, mean, marker=".", label=name)
        ax.fill_between(x, mean - std, mean + std, alpha=0.2)
    ax.set_xlabel("training time, s (steps x ms/step)" if wall else "step")
    ax.set_ylabel("validation loss (nats/token)")
    ax.set_title("validation loss, mean ± std over seeds")
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def params_plot(arms: dict[str, list[dict]], path: Path) -> Path:
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), sharey=True, constrained_layout=True)
    for ax, key in zip(axes, ("params", "active_params"), strict=True):
        for name, runs in arms.items():
            losses = [r["val_loss"] for r in runs]
            ax.errorbar(runs[0][key], np.mean(losses), yerr=np.std(losses, ddof=1) if len(runs) > 1 else None,
                        fmt="o", capsize=3, label=name)
        ax.set_xscale("log")
        ax.set_xlabel("total parameters" if key == "params" else "active parameters per token")
    axes[0].set_ylabel("final validation loss")
    axes[1].legend(fontsize=8)
    return save_figure(fig, path)


def expert_plots(arms: dict[str, list[dict]], out: Path) -> list[Path]:
    from chimera_jax.analysis.expert_load import layer_names, loads_from_metrics, plot

    paths = []
    for name, runs in arms.items():
        cfg = from_yaml(runs[0]["config"])
        if not cfg.model.moe.enabled:
            continue
        steps, loads = loads_from_metrics(Path(runs[0]["run_dir"]))
        history = (steps, loads) if len(steps) > 1 else None
        title = f"{name} (seed {runs[0]['seed']}): expert load per MoE layer, training batch at step {steps[-1]}"
        fig = plot(loads[-1], layer_names(cfg, loads.shape[1]), title, history)
        paths.append(save_figure(fig, out / f"experts_{name}.png"))
    return paths


def gate_plots(arms: dict[str, list[dict]], out: Path) -> list[Path]:
    from chimera_jax.analysis.modulation import gate_rows, gate_values

    paths = []
    for name, runs in arms.items():
        if not from_yaml(runs[0]["config"]).model.time.enabled:
            continue
        rows = gate_rows(gate_values(runs[0]["run_dir"]))
        fig, ax = plt.subplots(figsize=(7, 4.5), constrained_layout=True)
        for leaf, g in rows.items():
            depth = np.arange(1, g.shape[0] + 1)
            ax.plot(depth, g.mean(axis=1), marker="o", label=leaf)
        ax.set_xlabel("layer (t = layer / L)")
        ax.set_ylabel("mean gate")
        ax.set_title(f"{name} (seed {runs[0]['seed']}): modulation gates over depth")
        ax.legend(fontsize=6, ncol=2)
        paths.append(save_figure(fig, out / f"gates_{name}.png"))
    return paths


def depth_plot(arms: dict[str, list[dict]], path: Path) -> Path | None:
    """Each time-indexed arm's loss against the layers it ran, and against a token's forward FLOPs at that depth;
    the other arms as references (a line at their loss; a point at their FLOPs)."""
    fig, (by_depth, by_flops) = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    drawn = False
    for name, runs in arms.items():
        keys = sorted((k for k in runs[0].get("evals", {}) if k.startswith("depth:")), key=lambda k: int(k[6:]))
        if not keys:
            continue
        losses = np.array([[r["evals"][k]["loss"] for k in keys] for r in runs])
        std = losses.std(axis=0, ddof=1) if len(runs) > 1 else None
        line = by_depth.errorbar([int(k[6:]) for k in keys], losses.mean(axis=0), yerr=std, marker="o", markersize=3,
                                 capsize=2, label=name)
        flops = [runs[0]["evals"][k].get("flops_per_token") for k in keys]
        if None not in flops:
            by_flops.errorbar(flops, losses.mean(axis=0), yerr=std, marker="o", markersize=3, capsize=2,
                              color=line[0].get_color(), label=name)
        drawn = True
    if not drawn:
        plt.close(fig)
        return None
    for name, runs in arms.items():  # the references: arms that run at one depth only
        loss = [r.get("val_loss") for r in runs]
        if any("depth:" in k for k in runs[0].get("evals", {})) or None in loss:
            continue
        line = by_depth.axhline(np.mean(loss), linestyle="--", linewidth=1, color="grey", label=f"{name} (reference)")
        if runs[0].get("flops_per_token") is not None:
            by_flops.plot([runs[0]["flops_per_token"]], [np.mean(loss)], marker="*", markersize=10, linestyle="none",
                          color=line.get_color(), label=f"{name} (reference)")
    by_depth.set_xlabel("layers run")
    by_flops.set_xlabel("forward FLOPs per token at that depth")
    by_flops.set_xscale("log")
    for ax in (by_depth, by_flops):
        ax.set_ylabel("validation loss")
        ax.legend(fontsize=7)
    fig.suptitle("time-indexed models at other depths, mean ± std over seeds")
    return save_figure(fig, path)


def draw(study: Study, records: list[dict], out: Path) -> list[Path]:
    """The study's plots, in OUT; returns the files written."""
    arms = by_arm(study, records)
    paths: list[Path | None] = []
    for kind in study.plots:
        if kind == "curves":
            paths.append(curve_plot(arms, out / "val_loss.png", wall=False))
        elif kind == "wall":
            paths.append(curve_plot(arms, out / "val_loss_vs_time.png", wall=True))
        elif kind == "params":
            paths.append(params_plot(arms, out / "loss_vs_params.png"))
        elif kind == "experts":
            paths += expert_plots(arms, out)
        elif kind == "gates":
            paths += gate_plots(arms, out)
        elif kind == "depth":
            paths.append(depth_plot(arms, out / "depth.png"))
    return [p for p in paths if p is not None]
