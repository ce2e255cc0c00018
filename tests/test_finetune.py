"""Fine-tuning: the template's masks and bad-record counts, the SFT and DPO losses against hand-written oracles,
SFT and DPO runs through the training loop (loss falls, held-out preference accuracy rises, exact resume), runs
started from an imported HF model and read from an HF dataset folder (the same numbers as from the run and JSONL;
the run keeps the model's tokenizer), and one-line errors before anything compiles."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import TINY_YAML

from chimera_jax.bridge.convert import export_run
from chimera_jax.cli import finetune as finetune_cli
from chimera_jax.config import ConfigError, FinetuneConfig, load_config
from chimera_jax.errors import UserError
from chimera_jax.eval.protocol import EvalProtocol
from chimera_jax.finetune.data import TEMPLATE, encode_records, read_records, step_rows
from chimera_jax.finetune.losses import _dpo_step_loss, batch_logps, dpo_loss, sft_loss
from chimera_jax.finetune.stage import finetune, finetune_config, naming_the_copy, sft_validation, tokenizer_to_keep
from chimera_jax.generate.engine import Generator
from chimera_jax.hf.tokenizer import fingerprint, imported_tokenizer
from chimera_jax.models.loss import token_nll
from chimera_jax.runs.evaluate import evaluate_checkpoint
from chimera_jax.tokenizer import RUN_TOKENIZER, get_tokenizer
from chimera_jax.train.checkpoint import load_model, load_run_config
from chimera_jax.train.loop import train
from chimera_jax.train.metrics import read_metrics

SEQ = 64
BYTES = get_tokenizer("byte")
WORDS = ["apple", "river", "stone", "cloud", "tiger", "lemon", "piano", "maple", "ocean", "ember", "frost", "glade"]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, token_cache) -> Path:
    """A tiny run (d_model 32, seq 64, byte tokenizer) trained a few steps on BBC News: the starting checkpoint.
    Its positions are learned, so its GPT-2 export (``exported``) has exactly its parameters."""
    folder = tmp_path_factory.mktemp("pretrained")
    (folder / "tiny.yaml").write_text(TINY_YAML)
    cfg = load_config(folder / "tiny.yaml", ["--data.cache_dir", str(token_cache), "--data.seq_len", str(SEQ),
                                             "--model.positions", "learned",
                                             "--train.run_dir", str(folder / "run"), "--train.steps", "4",
                                             "--train.eval_batches", "1"])
    train(cfg)
    return cfg.run_dir


@pytest.fixture(scope="module")
def exported(pretrained, tmp_path_factory) -> Path:
    """The pretrained run as an HF folder (bridge/convert.py: GPT-2 config.json, safetensors, its byte tokenizer)."""
    return export_run(pretrained, tmp_path_factory.mktemp("hf") / "tiny-hf")


@pytest.fixture
def datasets_cache(tmp_path, monkeypatch):
    """``datasets`` writes its Arrow cache under tmp_path, not the user's HF cache."""
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_datasets"))
    return datasets


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def sft_records(n: int) -> list[dict]:
    return [{"prompt": f"Name item {i}.", "response": f"It is {WORDS[i % len(WORDS)]}."} for i in range(n)]


def dpo_records(n: int) -> list[dict]:
    """Chosen responses start with a fixed word the rejected ones never do; both are otherwise alike."""
    return [{"prompt": f"Item {i}?", "chosen": f"yes {WORDS[i % len(WORDS)]}", "rejected": f"no {WORDS[i % 7]}"}
            for i in range(n)]


def ft_config(pretrained: Path, tmp_path: Path, stage: str, data: Path, *overrides: str):
    return finetune_config(pretrained, stage, str(data), tmp_path / stage, [
        "--train.batch_size", "4", "--train.log_every", "1", "--train.progress", "false", "--optim.warmup_steps", "2",
        "--optim.lr", "3e-3", "--finetune.val_fraction", "0.25", *overrides])


def test_template_masks_the_response_and_bad_records_are_counted(tmp_path):
    long_prompt = "x" * SEQ
    path = write_jsonl(tmp_path / "sft.jsonl", [
        {"prompt": "Say hi.", "response": "hi"}, {"prompt": "Tell a story.", "response": "y" * 200},
        {"prompt": "No response."}, {"prompt": "Blank.", "response": "  "}, {"prompt": long_prompt, "response": "z"},
        "not json", [1, 2]])
    cfg = FinetuneConfig()
    (rows,), report = encode_records(read_records(str(path), "train", None), cfg, BYTES, SEQ, str(path))
    assert (report.read, report.used, report.truncated) == (7, 2, 1)
    assert report.rejected == {"missing field 'response'": 1, "empty response": 1, "prompt too long": 1,
                               "not a JSON object": 2}
    assert report.line() == (f"{path}: 7 read, 2 used (1 truncated), 5 rejected (empty response: 1, missing field "
                             "'response': 1, not a JSON object: 2, prompt too long: 1)")
    # The mask covers exactly the response and the end marker (the byte tokenizer's: the document separator);
    # inputs are the targets shifted right, padded with 0 under a zero mask.
    context = TEMPLATE.format(prompt="Say hi.")
    assert BYTES.decode(rows.targets[0][rows.mask[0] == 1]) == "hi\n\n"
    assert BYTES.decode(rows.inputs[0][: len(context) + 3]) == context + "hi\n"
    assert rows.mask[0].sum() == 4 and not rows.targets[0][int(rows.mask[0].nonzero()[0][-1]) + 1:].any()
    story = TEMPLATE.format(prompt="Tell a story.")
    assert rows.mask[1].sum() == SEQ - len(story) + 1 and rows.mask[1][-1] == 1  # truncated: fills the row

    with pytest.raises(ConfigError, match=r"no usable records in .*: 1 read, 0 used"):
        encode_records([{"prompt": "p"}], cfg, BYTES, SEQ, "x.jsonl")
    assert step_rows(5, 3, 0, 0).tolist() + step_rows(5, 3, 0, 1).tolist()[:2] == np.random.default_rng(
        [0, 0]).permutation(5).tolist()  # steps walk through an epoch's shuffle


def test_alpaca_and_hh_rlhf_fields():
    """Alpaca's instruction + input + output, and hh-rlhf's whole conversations whose prompt is their common part."""
    alpaca = FinetuneConfig(prompt_field="instruction", input_field="input", response_field="output")
    records = [{"instruction": "Add.", "input": "2 3", "output": "5"},
               {"instruction": "Wave.", "input": "", "output": "o/"}]
    (rows,), _ = encode_records(records, alpaca, BYTES, SEQ, "alpaca")
    assert BYTES.decode(rows.inputs[0][rows.inputs[0] > 0]) == TEMPLATE.format(prompt="Add.\n\n2 3") + "5\n"
    assert BYTES.decode(rows.inputs[1][rows.inputs[1] > 0]) == TEMPLATE.format(prompt="Wave.") + "o/\n"

    hh = FinetuneConfig(stage="dpo", prompt_field="")
    talk = "\n\nHuman: Is it late?\n\nAssistant:"
    pairs = [{"chosen": talk + " Yes, go to bed.", "rejected": talk + " No."},
             {"chosen": talk + " Ok.", "rejected": talk + " Ok."}]
    (chosen, rejected), report = encode_records(pairs, hh, BYTES, SEQ * 2, "hh")
    assert BYTES.decode(chosen.targets[0][chosen.mask[0] == 1]) == " Yes, go to bed.\n\n"
    assert BYTES.decode(rejected.inputs[0][: len(TEMPLATE.format(prompt=talk))]) == TEMPLATE.format(prompt=talk)
    assert report.rejected == {"chosen equals rejected": 1}
    with pytest.raises(ConfigError, match="needs finetune.stage=dpo"):
        FinetuneConfig(prompt_field="")


def _sft_batch(n: int = 6):
    (rows,), _ = encode_records(sft_records(n), FinetuneConfig(), BYTES, SEQ, "records")
    return tuple(map(jnp.asarray, rows))


@pytest.mark.slow
def test_sft_loss_is_the_token_nll_of_the_response_tokens_only(pretrained):
    model, _ = load_model(pretrained)
    inputs, targets, mask = _sft_batch()
    loss, _ = sft_loss(model, (inputs, targets, mask), None, jnp.float32, None)
    logits, _ = model(inputs, inference=True)
    nll = np.asarray(token_nll(logits, targets))
    np.testing.assert_allclose(float(loss), nll[np.asarray(mask) == 1].mean(), rtol=1e-6)
    # Another target under the prompt or the padding does not move the loss; one under the response does.
    moved = jnp.where(mask == 0, (targets + 7) % 256, targets)
    assert float(sft_loss(model, (inputs, moved, mask), None, jnp.float32, None)[0]) == pytest.approx(float(loss),
                                                                                                      rel=1e-6)
    response = jnp.where(mask == 1, (targets + 7) % 256, targets)
    assert float(sft_loss(model, (inputs, response, mask), None, jnp.float32, None)[0]) != pytest.approx(float(loss))


@pytest.mark.slow
def test_dpo_loss_starts_at_log2_and_its_gradient_is_the_formulas(pretrained):
    model, _ = load_model(pretrained)
    chosen, rejected = (tuple(map(jnp.asarray, rows)) for rows in encode_records(
        dpo_records(4), FinetuneConfig(stage="dpo"), BYTES, SEQ, "pairs")[0])
    ref = (batch_logps(model, *chosen), batch_logps(model, *rejected))
    beta = 0.5
    batch = (*chosen, *rejected, *ref)
    value_and_grad = eqx.filter_jit(eqx.filter_value_and_grad(_dpo_step_loss, has_aux=True))
    (loss, metrics), grads = value_and_grad(model, batch, None, jnp.float32, None, beta=beta)
    assert float(loss) == pytest.approx(math.log(2), rel=1e-6)
    assert float(metrics["reward_margin"]) == 0 and float(metrics["accuracy"]) == 0
    # At margin 0, d loss = -beta * sigmoid(0) / B * d(sum logp_chosen - sum logp_rejected).
    diff = eqx.filter_jit(eqx.filter_grad(lambda m: (batch_logps(m, *chosen) - batch_logps(m, *rejected)).sum()))(model)
    for g, d in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(diff), strict=True):
        np.testing.assert_allclose(g, -beta * 0.5 / 4 * d, rtol=1e-4, atol=1e-7)
    # Anywhere: d loss / d logp_chosen = -beta * sigmoid(-margin) / B, and the opposite for the rejected.
    logps = [jnp.asarray(v) for v in np.random.default_rng(0).normal(size=(4, 3))]
    g_chosen, g_rejected = jax.grad(lambda c, r: dpo_loss(c, r, logps[2], logps[3], beta)[0], (0, 1))(*logps[:2])
    margin = beta * ((logps[0] - logps[2]) - (logps[1] - logps[3]))
    np.testing.assert_allclose(g_chosen, -beta * jax.nn.sigmoid(-margin) / 3, rtol=1e-6)
    np.testing.assert_allclose(g_rejected, beta * jax.nn.sigmoid(-margin) / 3, rtol=1e-6)


@pytest.mark.slow
def test_sft_lowers_the_held_out_response_loss_and_resumes_exactly(pretrained, tmp_path):
    data = write_jsonl(tmp_path / "sft.jsonl", sft_records(32))
    cfg = ft_config(pretrained, tmp_path, "sft", data, "--train.steps", "24", "--train.eval_every", "12",
                    "--train.checkpoint_every", "12")
    assert (cfg.name, cfg.run_dir, cfg.finetune.source) == ("tiny-sft", tmp_path / "sft", str(pretrained))
    model, _ = load_model(pretrained)
    (rows,), _ = encode_records(sft_records(32)[24:], cfg.finetune, BYTES, SEQ, "held out")
    before = sft_validation(rows, 4)(model)["loss"]
    summary = finetune(cfg, max_traces=1)
    assert summary["data"] == f"{data}: 32 read, 32 used (0 truncated), 0 rejected"
    assert summary["records"] == {"train": 24, "validation": 8}
    assert summary["val_loss"] < before - 0.5, (before, summary["val_loss"])
    first = read_metrics(cfg.run_dir)
    assert {"loss", "ce", "response_tokens", "grad_norm", "lr"} <= set(first[0])
    # Interrupted after step 12 (its last checkpoint gone): the rerun gives the uninterrupted metrics.
    shutil.rmtree(cfg.run_dir / "checkpoints" / "24")
    finetune(cfg)
    again = read_metrics(cfg.run_dir)
    assert [m["step"] for m in again] == [m["step"] for m in first]
    for a, b in zip(again, first, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-6)
    # Run once more: complete, so nothing trains, and the line says so with the logged validation loss.
    line = finetune_cli.format_summary(finetune(cfg))
    assert line.startswith("tiny-sft already complete at step 24 (train.steps=24): nothing to do | val loss "), line
    assert f"{summary['val_loss']:.4f}" in line and read_metrics(cfg.run_dir) == again


@pytest.mark.slow
def test_dpo_raises_held_out_preference_accuracy(pretrained, tmp_path):
    data = write_jsonl(tmp_path / "dpo.jsonl", dpo_records(32))
    cfg = ft_config(pretrained, tmp_path, "dpo", data, "--train.steps", "16", "--train.eval_every", "16",
                    "--train.checkpoint_every", "16", "--finetune.beta", "0.5")
    summary = finetune(cfg)
    train_lines = read_metrics(cfg.run_dir, "train")
    assert train_lines[0]["loss"] == pytest.approx(math.log(2), rel=1e-5) and train_lines[0]["accuracy"] == 0
    assert {"reward_margin", "logp_chosen", "logp_rejected"} <= set(train_lines[0])
    val = read_metrics(cfg.run_dir, "validation")[-1]
    # Held-out pairs: at the start every margin is 0 (accuracy 0, loss log 2).
    assert val["accuracy"] >= 0.75 and val["reward_margin"] > 0 and val["loss"] < math.log(2) - 0.1, val
    assert summary["val_accuracy"] == val["accuracy"]


def test_missing_checkpoint_or_no_usable_record_is_one_line_before_compiling(pretrained, tmp_path):
    empty = write_jsonl(tmp_path / "empty.jsonl", [{"prompt": "only a prompt"}, "{broken"])
    cases = [(["--checkpoint", str(tmp_path / "nope"), "--stage", "sft", "--data", str(empty)], "checkpoint: "),
             (["--checkpoint", str(pretrained), "--stage", "sft", "--data", str(empty), "--out", str(tmp_path / "o")],
              "finetune.data: no usable records in"),
             (["--checkpoint", str(pretrained), "--stage", "dpo", "--data", str(tmp_path / "none.jsonl")],
              "finetune.data: no such file"),
             (["--checkpoint", str(pretrained), "--stage", "sft"], "data: required"),
             (["--checkpoint", str(pretrained), "--stage", "sft", "--data", str(empty), "--model.d-model", "64",
               "--out", str(tmp_path / "o")], "--model.d_model: the model comes from the source")]
    for argv, message in cases:
        with pytest.raises(ConfigError) as err:
            finetune_cli.main(argv)
        assert str(err.value).startswith(message) and "\n" not in str(err.value), str(err.value)
    assert not (tmp_path / "o").exists()


def test_model_overrides_are_refused_but_how_it_runs_and_other_settings_may_change(pretrained, tmp_path):
    """A changed model field would be recorded for the source's weights it does not describe: refused, as the
    preset flag is; remat (execution only) and the training settings pass."""
    for flags in (["--model.n_layers=3"], ["--model", "dense"], ["--optim.lr", "1e-3", "--model.moe.enabled", "true"]):
        with pytest.raises(ConfigError, match=r"^--model\S*: the model comes from the source"):
            finetune_config(pretrained, "sft", "d.jsonl", tmp_path / "o", flags)
    cfg = finetune_config(pretrained, "sft", "d.jsonl", tmp_path / "o", ["--model.remat", "dots", "--optim.lr", "1e-3"])
    assert (cfg.model.remat, cfg.optim.lr) == ("dots", 1e-3)
    assert dataclasses.replace(cfg.model, remat="none") == load_run_config(pretrained).model


def test_relative_source_and_data_are_recorded_absolute(pretrained, exported, tmp_path, monkeypatch):
    """A run given relative paths resumes from another directory: its config holds them made absolute."""
    data = write_jsonl(tmp_path / "d.jsonl", sft_records(4))
    for source in (pretrained, exported):
        monkeypatch.chdir(source.parent)
        cfg = finetune_config(source.name, "sft", data.name if source.parent == tmp_path else str(data),
                              out=tmp_path / "o")
        assert cfg.finetune.source == str(source.resolve()) and cfg.finetune.data == str(data.resolve())
    monkeypatch.chdir(tmp_path)
    ft = finetune_config("smollm2", "sft", "some/hub-dataset", out=tmp_path / "o").finetune
    assert (ft.source, ft.data) == ("smollm2", "some/hub-dataset")


@pytest.mark.slow
def test_sft_from_the_exported_hf_folder_and_an_hf_dataset_folder_matches_the_run(
        pretrained, exported, datasets_cache, token_cache, tmp_path):
    """The same model (imported from its HF export) on the same records (a parquet dataset folder with other field
    names): the same losses and gradient norms, step by step, and a run that loads and evaluates with the HF
    folder's tokenizer."""
    records = sft_records(16)
    folder = tmp_path / "dataset"
    folder.mkdir()
    datasets_cache.Dataset.from_list([{"instruction": r["prompt"], "output": r["response"]} for r in records]
                                     ).to_parquet(str(folder / "train.parquet"))
    steps = ("--train.steps", "2", "--train.eval_every", "2", "--train.checkpoint_every", "2")
    from_run = ft_config(pretrained, tmp_path / "run", "sft", write_jsonl(tmp_path / "sft.jsonl", records), *steps)
    from_hf = ft_config(exported, tmp_path / "hf", "sft", folder, *steps, "--data.seq_len", str(SEQ),
                        "--data.cache_dir", str(token_cache), "--finetune.prompt_field", "instruction",
                        "--finetune.response_field", "output")
    kept = (tmp_path / "hf" / "sft" / "tokenizer").resolve()
    assert (from_hf.name, from_hf.data.tokenizer) == ("tiny-hf-sft", RUN_TOKENIZER)
    assert from_hf.data.tokenizer != from_run.data.tokenizer == "byte"
    summaries = finetune(from_run), finetune(from_hf)
    assert summaries[1]["data"] == f"{folder}: 16 read, 16 used (0 truncated), 0 rejected"
    assert summaries[1]["val_loss"] == pytest.approx(summaries[0]["val_loss"], rel=1e-5)
    ours, theirs = (read_metrics(cfg.run_dir, "train") for cfg in (from_run, from_hf))
    assert len(ours) == len(theirs) == 2
    for a, b in zip(ours, theirs, strict=True):
        for key in ("loss", "ce", "grad_norm"):
            assert b[key] == pytest.approx(a[key], rel=1e-5), (key, a, b)

    (model_run, _), (model_hf, cfg_hf) = load_model(from_run.run_dir), load_model(from_hf.run_dir)
    assert cfg_hf.data.tokenizer == f"hf:{kept}"
    tokens = jnp.asarray([BYTES.encode(TEMPLATE.format(prompt="Name item 3."))])
    np.testing.assert_allclose(model_hf(tokens, inference=True)[0], model_run(tokens, inference=True)[0], atol=1e-4)
    protocol = EvalProtocol(split="validation", max_windows=2, batch_size=2)
    evals = [evaluate_checkpoint(cfg.run_dir, protocol) for cfg in (from_run, from_hf)]
    assert evals[1]["bits_per_byte"] == pytest.approx(evals[0]["bits_per_byte"], rel=1e-5)


@pytest.mark.slow
def test_dpo_from_the_hf_folder_takes_it_as_the_reference_and_keeps_its_tokenizer(exported, tmp_path, monkeypatch):
    """The run keeps the folder's tokenizer: once the folder is moved away, and the run itself too, it still loads,
    gives the folder's ids and generates; resuming it, which needs the folder again (DPO's reference), says so in
    one line."""
    source = shutil.copytree(exported, tmp_path / "tiny-hf")
    data = write_jsonl(tmp_path / "dpo.jsonl", dpo_records(8))
    cfg = ft_config(source, tmp_path, "dpo", data, "--train.steps", "1", "--train.eval_every", "1",
                    "--train.checkpoint_every", "1", "--data.seq_len", str(SEQ))
    kept = tmp_path / "dpo" / "tokenizer"
    assert cfg.data.tokenizer == RUN_TOKENIZER and not kept.exists()
    with pytest.raises(UserError, match=r"no run directory is known here: read the config with load_run_config"):
        get_tokenizer(RUN_TOKENIZER)  # relative to no run
    finetune(cfg)
    first = read_metrics(cfg.run_dir, "train")[0]
    # The policy starts as the reference: every margin is 0.
    assert first["loss"] == pytest.approx(math.log(2), rel=1e-5) and first["accuracy"] == 0, first
    assert first["reward_margin"] == 0

    moved = source.rename(tmp_path / "moved")
    run_cfg = load_run_config(cfg.run_dir)
    assert run_cfg.data.tokenizer == f"hf:{kept.resolve()}" and naming_the_copy(run_cfg).data.tokenizer == RUN_TOKENIZER
    # Resuming: the source is gone. The same command, or the run's own config, stops with one line.
    gone = f"checkpoint: {source}, the source of the run in {cfg.run_dir}, cannot be read (no such HF model folder"
    for resume in (lambda: finetune_cli.main(["--checkpoint", str(source), "--stage", "dpo", "--data", str(data),
                                              "--out", str(cfg.run_dir)]),
                   lambda: finetune(run_cfg)):
        with pytest.raises(ConfigError) as err:
            resume()
        assert str(err.value).startswith(gone) and "\n" not in str(err.value), str(err.value)

    run = Path(shutil.move(cfg.run_dir, tmp_path / "dpo-moved"))  # the run itself moves: it names its copy relatively
    assert not cfg.run_dir.exists()
    get_tokenizer.cache_clear()  # as in a later process: nothing loaded from the folder or the run before they moved
    monkeypatch.chdir(moved)
    run_cfg = load_run_config(run)
    tokenizer = run_cfg.data.tokenizer
    assert tokenizer == f"hf:{(run / 'tokenizer').resolve()}"  # its own copy, never one outside it
    assert run_cfg.run_dir == run  # and the run is where it was read: continuing it writes there
    ours, theirs = get_tokenizer(tokenizer), imported_tokenizer(str(moved))
    assert fingerprint(ours.hf) == fingerprint(theirs.hf)
    assert (ours.vocab_size, ours.eos_id) == (theirs.vocab_size, theirs.eos_id)
    np.testing.assert_array_equal(ours.id_byte_lengths(), theirs.id_byte_lengths())
    text = "Caf\u00e9 \u65e5\u672c <|endoftext|>\n\n### Response:\n"
    assert ours.encode(text) == theirs.encode(text) and ours.decode(theirs.encode(text)) == text
    generation = Generator.from_run(run).generate(text, max_new_tokens=4, ignore_eos=True)
    assert generation.prompt_tokens == [len(theirs.encode(text))]
    assert generation.texts[0] == theirs.decode(generation.tokens[0]) and generation.new_tokens == [4]

    # With the source back, the moved run resumed names its copy and does not save it again.
    moved.rename(source)
    again = finetune_config(source, "dpo", str(data), run, ["--train.steps", "2"])
    assert again.data.tokenizer == RUN_TOKENIZER and tokenizer_to_keep(again) is None


def test_an_hf_dataset_folder_or_file_is_read_by_split_offline(datasets_cache, tmp_path):
    folder = tmp_path / "pairs"
    folder.mkdir()
    splits = {"train": dpo_records(6), "validation": dpo_records(9)[6:]}
    for split, records in splits.items():
        datasets_cache.Dataset.from_list(records).to_parquet(str(folder / f"{split}.parquet"))
    assert read_records(str(folder), "validation", None) == splits["validation"]
    assert read_records(str(folder), "train", 4) == splits["train"][:4]
    assert read_records(str(folder / "validation.parquet"), "train", None) == splits["validation"]  # a file: train
    cases = [(str(folder), "test", "finetune.data: loading .* as an HF dataset failed: Unknown split"),
             (str(tmp_path / "none.parquet"), "train", "finetune.data: no such file"),
             ("no-such-org/no-such-dataset", "train", "finetune.data: loading .* as an HF dataset failed")]
    for source, split, message in cases:
        with pytest.raises(ConfigError, match=message) as err:
            read_records(source, split, None)
        assert "\n" not in str(err.value)


def test_an_hf_dataset_subset_is_read_by_name_offline(datasets_cache, tmp_path):
    """A dataset with several configurations (the hub's subsets, e.g. ai2_arc's ARC-Easy) in a local folder."""
    folder = tmp_path / "arc"
    subsets = {"easy": sft_records(3), "hard": sft_records(7)[3:]}
    for name, records in subsets.items():
        (folder / name).mkdir(parents=True)
        datasets_cache.Dataset.from_list(records).to_parquet(str(folder / name / "train.parquet"))
    (folder / "README.md").write_text("---\nconfigs:\n" + "".join(
        f"- config_name: {n}\n  data_files:\n  - split: train\n    path: {n}/train.parquet\n" for n in subsets)
        + "---\n")
    for name, records in subsets.items():
        assert read_records(str(folder), "train", None, name) == records
    with pytest.raises(ConfigError, match=r"^finetune.data: loading .* \(split train, subset medium\)"):
        read_records(str(folder), "train", None, "medium")
    with pytest.raises(ConfigError, match="^finetune.subset=easy: .* is one file, with no subsets"):
        read_records(str(folder / "easy" / "train.parquet"), "train", None, "easy")


def test_a_checkpoint_neither_a_run_nor_an_hf_model_is_one_line_before_compiling(exported, tmp_path):
    data = write_jsonl(tmp_path / "sft.jsonl", sft_records(4))
    (tmp_path / "empty").mkdir()
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    reasons = {tmp_path / "empty": "Unrecognized model", tmp_path / "bert": "cannot import HF model_type 'bert'",
               tmp_path / "nope.gguf": "no such GGUF file", tmp_path / "gone": "no such HF model folder",
               "no-such-org/no-such-model": "couldn't connect"}
    for spec, reason in reasons.items():
        with pytest.raises(ConfigError) as err:
            finetune_cli.main(["--checkpoint", str(spec), "--stage", "sft", "--data", str(data), "--out",
                               str(tmp_path / "o")])
        message = str(err.value)
        assert message.startswith(f"checkpoint: {spec} is neither a run directory") and "\n" not in message, message
        assert reason in message, message
    with pytest.raises(ConfigError, match="finetune.source_step=3: .* is an HF model, not a run"):
        finetune_cli.main(["--checkpoint", str(exported), "--stage", "sft", "--data", str(data), "--out",
                           str(tmp_path / "o"), "--finetune.source_step", "3"])
    assert not (tmp_path / "o").exists()
