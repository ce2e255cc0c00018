"""Per-layer expert utilisation of an MoE run, as a PNG.

    chimera-plot-experts [--checkpoint] RUN_DIR [--from-checkpoint] [--batches 4] [--step N] [--out FILE.png]
    python scripts/plot_experts.py RUN_DIR                     # from RUN_DIR/metrics.jsonl
    python scripts/plot_experts.py RUN_DIR --from-checkpoint   # route validation windows through the model

From the metrics (the training batches' ``aux/expert_load``): the top row has one bar chart per MoE
layer, the share of the k * tokens assignments each expert received at the chosen logged step (the
last by default); the bottom row shows the same shares over the whole run. From a checkpoint: the bar
charts only, for the first ``--batches`` batches of validation windows. A dashed line marks perfect
balance, 1/E.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from chimera_jax.config import ConfigError
from chimera_jax.flags import parse


@dataclass
class PlotArgs:
    checkpoint: Path  # the MoE run: --checkpoint RUN, as every command names a run, or RUN alone
    from_checkpoint: bool = False  # route validation windows through the model
    batches: int = 4  # validation batches to route (with --from-checkpoint)
    step: int | None = None  # logged step to draw; None: the last
    out: Path | None = None  # None: RUN_DIR/expert_load.png


def main(argv: Sequence[str]) -> Path:
    args = parse(PlotArgs, argv, positional="checkpoint")
    if not args.checkpoint.is_dir():
        raise ConfigError(f"checkpoint: no such folder {args.checkpoint}")
    from chimera_jax.analysis.expert_load import run_figure, save_figure

    out = args.out or args.checkpoint / "expert_load.png"
    save_figure(run_figure(args.checkpoint, from_checkpoint=args.from_checkpoint, batches=args.batches,
                           step=args.step), out)
    print(f"wrote {out}")
    return out
