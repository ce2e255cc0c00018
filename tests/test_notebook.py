"""notebooks/modulation.ipynb runs top to bottom, headless, on a tiny ti_ssm checkpoint trained here."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from chimera_jax.config import resolve_config
from chimera_jax.train.checkpoint import Checkpointer
from chimera_jax.train.loop import train
from chimera_jax.train.optimizer import make_optimizer
from chimera_jax.train.state import init_state

pytestmark = pytest.mark.slow  # trains a run and executes the notebook

REPO = Path(__file__).resolve().parent.parent
NOTEBOOK = REPO / "notebooks" / "modulation.ipynb"


def test_modulation_notebook_runs_on_a_tiny_ti_ssm_checkpoint(tiny_config, monkeypatch):
    flags = ("--model.mixer", "ssm", "--model.positions", "none", "--model.d_model", "16",
             "--model.ssm.state_size", "4", "--model.time.enabled", "true", "--model.time.emb_dim", "8",
             "--model.time.hidden", "8", "--data.seq_len", "16", "--train.steps", "3",
             "--train.batch_size", "2", "--train.eval_every", "3", "--train.eval_batches", "1",
             "--train.checkpoint_every", "3")
    cfg = tiny_config(*flags)
    train(cfg)
    # The run to compare with: initialised only (the section reads its config and weights, not its training)
    across = resolve_config(tiny_config(*flags, "--model.time.train_depth", "uniform", "--model.time.depth_max", "4",
                                        run_dir=cfg.run_dir.parent / "across"), 256)
    with Checkpointer(across.run_dir) as ckpt:
        ckpt.save(init_state(across, make_optimizer(across.optim, across.train.steps)), across)
    monkeypatch.setenv("CHIMERA_RUN_DIR", str(cfg.run_dir))
    monkeypatch.setenv("CHIMERA_COMPARE_RUN_DIR", str(across.run_dir))
    monkeypatch.setenv("CHIMERA_EVAL_WINDOWS", "4")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(REPO)}}).execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert sum(o.output_type == "display_data" and "image/png" in o.data for o in outputs) >= 6  # every figure
    text = "".join(o.get("text", "") for o in outputs)
    assert "median half-life" in text  # the SSM section ran, not its attention fallback
    assert "across: depths 1-4 (uniform)" in text  # and the comparison with the run trained across depths
