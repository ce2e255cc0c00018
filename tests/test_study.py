"""Studies: a two-arm, two-seed smoke study end to end, its numbers recomputed from the runs, resumed after a
kill, rerun without retraining; a bad study file stopped with one line before anything trains."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats

from chimera_jax import data
from chimera_jax.bench.flops import forward_flops_per_token, train_flops_per_token
from chimera_jax.cli import experiment
from chimera_jax.config import ConfigError
from chimera_jax.study import runner
from chimera_jax.train.checkpoint import load_run_config

STUDY = """
name: tiny
description: dense against a time-indexed model.
baseline: dense
arms:
  - {name: dense, preset: dense}
  - {name: shared, preset: dense, overrides: [model.time.enabled=true]}
profiles:
  smoke:
    seeds: 2
    overrides: [model.d_model=16, model.n_layers=2, model.n_heads=2, data.seq_len=16, train.steps=4,
                train.batch_size=2, train.eval_every=2, train.eval_batches=1, train.checkpoint_every=2,
                train.log_every=1, optim.warmup_steps=1, train.progress=false, model.time.emb_dim=8,
                model.time.hidden=8]
evaluation:
  depths: [0.5, 1.0]
plots: [curves, wall, params, depth, gates]
"""


class Killed(Exception):
    pass


def study_file(tmp_path, text: str = STUDY):
    path = tmp_path / "tiny.yaml"
    path.write_text(text)
    return str(path)


@pytest.mark.slow
def test_smoke_study_resumes_a_killed_run_reports_its_runs_and_reruns_without_training(tmp_path, token_cache,
                                                                                         monkeypatch, caplog, capsys):
    out = tmp_path / "out"
    argv = [study_file(tmp_path), "--profile", "smoke", "--out", str(out), "--data.cache_dir", str(token_cache)]
    real_get_batch = data.get_batch

    def killed_at_step_3(tokens, seq_len, batch, seed, step, **kw):
        if step == 2:
            raise Killed
        return real_get_batch(tokens, seq_len, batch, seed, step, **kw)

    with monkeypatch.context() as m:  # killed in the first run, after its step-2 checkpoint
        m.setattr(data, "get_batch", killed_at_step_3)
        with pytest.raises(Killed):
            experiment.main(argv)
    first = out / "dense" / "seed0"
    kept = first / "checkpoints" / "2"
    kept_mtime = kept.stat().st_mtime_ns
    assert not (first / runner.TRAIN_RECORD).exists()

    with caplog.at_level("INFO", logger="chimera_jax.train.loop"):
        results = experiment.main(argv)
    assert "resumed from" in caplog.text and kept.stat().st_mtime_ns == kept_mtime  # continued, not restarted
    assert f"{out / 'shared' / 'seed1'}: evaluating at depths 1, 2\n" in capsys.readouterr().out  # not silent
    train_steps = [line["step"] for line in map(json.loads, (first / "metrics.jsonl").read_text().splitlines())
                   if line["split"] == "train"]
    assert train_steps == [1, 2, 3, 4]

    runs = {(arm, k): json.loads((out / arm / f"seed{k}" / runner.RUN_RECORD).read_text())
            for arm in ("dense", "shared") for k in (0, 1)}
    assert {(r["arm"], r["seed"]) for r in results["runs"]} == set(runs)
    for (arm, _), run in runs.items():  # the time-indexed arm run at its trained depth reproduces its val loss
        assert list(run["val_curve"]) == ["2", "4"] and run["val_curve"]["4"] == run["val_loss"]
        if arm == "shared":
            assert set(run["evals"]) == {"depth:1", "depth:2"}
            assert run["evals"]["depth:2"]["loss"] == pytest.approx(run["val_loss"], abs=1e-5)
    report = (out / "report.md").read_text()
    shared = results["arms"]["shared"]
    assert (f"| shared | {shared['depth:1/loss']['mean']:.4f} ± {shared['depth:1/loss']['std']:.4f} | "
            f"{shared['depth:2/loss']['mean']:.4f} ± {shared['depth:2/loss']['std']:.4f} |") in report  # loss by depth
    for (arm, _), run in runs.items():  # model FLOPs of the whole run: per token x steps x batch x seq_len
        model = load_run_config(out / arm / "seed0").model
        assert run["train_flops"] == train_flops_per_token(model, 16) * 4 * 2 * 16
        assert run["flops_per_token"] == sum(forward_flops_per_token(model, 16).values())
    for arm in ("dense", "shared"):
        losses = [runs[arm, k]["val_loss"] for k in (0, 1)]
        summary = results["arms"][arm]["val_loss"]
        assert (summary["mean"], summary["std"], summary["n"]) == pytest.approx(
            (np.mean(losses), abs(losses[0] - losses[1]) / math.sqrt(2), 2))
        assert f"{np.mean(losses):.4f} ± {abs(losses[0] - losses[1]) / math.sqrt(2):.4f}" in report
        assert results["arms"][arm]["params"]["mean"] == runs[arm, 0]["params"]
    d = [runs["shared", k]["val_bits_per_byte"] - runs["dense", k]["val_bits_per_byte"] for k in (0, 1)]
    half = stats.t.ppf(0.975, 1) * abs(d[0] - d[1]) / math.sqrt(2) / math.sqrt(2)
    diff, mean = results["differences"]["shared"]["val_bits_per_byte"], np.mean(d)
    assert (diff["mean"], diff["low"], diff["high"]) == pytest.approx((mean, mean - half, mean + half))
    assert f"| shared | val_bits_per_byte | {mean:+.4f} | [{mean - half:+.4f}, {mean + half:+.4f}]" in report
    assert {p.name for p in out.glob("*.png")} == {"val_loss.png", "val_loss_vs_time.png", "loss_vs_params.png",
                                                   "depth.png", "gates_shared.png"}

    def no_training(cfg):
        raise AssertionError(f"retrained {cfg.run_dir}")

    monkeypatch.setattr(runner, "train", no_training)
    (out / "report.md").unlink()
    again = experiment.main(argv)
    assert again["runs"] == results["runs"] and (out / "report.md").read_text() == report
    with pytest.raises(ConfigError, match=r"dense/seed0 was trained under another config \(optim.lr: 0.001 now 0.01\)"):
        experiment.main([*argv, "--optim.lr", "0.01"])  # into the same --out: an error, not a silent mix


def test_hf_baselines_show_progress_and_say_why_one_failed(tmp_path, monkeypatch, capsys):
    from chimera_jax.bridge import compare
    from chimera_jax.study.spec import load_study, plan

    study = load_study(study_file(tmp_path, STUDY.replace("evaluation:\n", "evaluation:\n  corpora: [bbc_news]\n"
                                                                       "  hf_baselines: [nowhere]\n")))
    cfg = plan(study, "smoke", 1, tmp_path / "out", [])[0].config
    monkeypatch.setattr(compare, "evaluate_isolated", lambda spec, protocol, repeats: {
        "model": spec, "error": f"no such HF model folder: {spec}"})
    assert runner.hf_baselines(study, cfg, tmp_path / "out") == [
        {"model": "nowhere", "error": "no such HF model folder: nowhere", "corpus": "bbc_news"}]
    shown = capsys.readouterr()
    assert "HF baseline nowhere on bbc_news: no such HF model folder: nowhere\n" in shown.out
    assert "HF baselines" in shown.err and "nowhere on bbc_news/validation" in shown.err  # the bar names the evaluation
    assert not (tmp_path / "out" / "hf" / "nowhere-bbc_news.json").exists()  # a failure is retried next time


@pytest.mark.parametrize(("edit", "message"), [
    (("preset: dense}", "presett: dense}"), "tiny.yaml: arms.0: The fields `presett` are not valid for Arm"),
    (("seeds: 2", "seeds: two"), "profiles.smoke.seeds: Couldn't parse 'two' into an int"),
    (("baseline: dense", "baseline: nope"), "baseline: 'nope' is not one of the arms"),
    (("time.enabled=true", "moe.enabled=true, model.moe.top_k=9"), "arms.shared: model.moe.top_k=9 must be between"),
    (("time.enabled=true", "time.enabled"), "arms.shared.overrides: override 'model.time.enabled' must read"),
])
def test_a_bad_study_fails_with_one_line_before_anything_trains(tmp_path, monkeypatch, edit, message):
    monkeypatch.setattr(runner, "train", lambda cfg: pytest.fail("trained"))
    out = tmp_path / "out"
    with pytest.raises(ConfigError) as err:
        experiment.main([study_file(tmp_path, STUDY.replace(*edit)), "--profile", "smoke", "--out", str(out)])
    assert message in str(err.value) and "\n" not in str(err.value)
    assert not out.exists()
