"""The training loop: exact resume, NaN handling, multi-process equality."""

import json

import pytest
import torch
from conftest import FAST_TRAIN, TINY_DDPM, TINY_VAE, run_cli

from genlab.training.checkpoint import latest_checkpoint


def losses(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def final_tensors(run):
    c = latest_checkpoint(run / "checkpoints")
    return c.step, c.tensors


@pytest.mark.parametrize("family,data,tiny", [("ddpm", "digits", TINY_DDPM)])
def test_resume_continues_exactly(tmp_path, family, data, tiny):
    """Images, U-Net with dropout (the toy runs of every family: tests/test_contract.py)."""
    common = [family, "--data", data, *tiny, *FAST_TRAIN, "train.ckpt_every=3", "train.warmup_steps=2",
              "train.ema_decay=0.9", "model.dropout=0.1" if family == "ddpm" else "model.beta=0.5"]
    assert run_cli("train", *common, "--out", tmp_path / "full", "train.steps=6") == 0
    # interrupted after step 3 (its last checkpoint), then resumed to the same end
    assert run_cli("train", *common, "--out", tmp_path / "part", "train.steps=3") == 0
    assert run_cli("train", *common, "--out", tmp_path / "part", "train.steps=6", "--resume") == 0
    full, part = losses(tmp_path / "full"), losses(tmp_path / "part")
    assert [r["step"] for r in part] == list(range(1, 7))
    for a, b in zip(full, part):
        assert a["loss"] == b["loss"], (a, b)  # bit-identical on CPU
    sa, ta = final_tensors(tmp_path / "full")
    sb, tb = final_tensors(tmp_path / "part")
    assert sa == sb == 6
    for k in ta:
        if not k.startswith("rng/"):
            assert torch.equal(ta[k], tb[k]), k


def test_resume_drops_metrics_logged_after_the_checkpoint(tmp_path):
    common = ["ddpm", "--data", "ring8", *TINY_DDPM, *FAST_TRAIN, "--out", tmp_path / "r"]
    assert run_cli("train", *common, "train.steps=4", "train.ckpt_every=2") == 0
    # pretend the run died after logging step 4 but before its checkpoint
    (tmp_path / "r" / "checkpoints" / "step-0000004.json").unlink()
    assert run_cli("train", *common, "train.steps=4", "train.ckpt_every=2", "--resume") == 0
    assert [r["step"] for r in losses(tmp_path / "r")] == [1, 2, 3, 4]


def test_nan_loss_stops_with_the_step_and_keeps_last_good_checkpoint(tmp_path, monkeypatch, capsys):
    from genlab.models import ddpm

    original = ddpm.train_step

    def poisoned(model, batch, opts, ctx):
        if ctx.step == 4:  # the 5th step sees a NaN pixel
            batch = {**batch, "x": batch["x"] * float("nan")}
            ctx.batch = batch
        return original(model, batch, opts, ctx)

    monkeypatch.setattr(ddpm, "train_step", poisoned)
    out = tmp_path / "nan"
    code = run_cli("train", "ddpm", "--data", "ring8", *TINY_DDPM, *FAST_TRAIN, "train.steps=8", "train.ckpt_every=2",
                   "--out", out)
    err = capsys.readouterr().err
    assert code == 1
    assert "loss=nan at step 5" in err and "step-0000004" in err
    assert latest_checkpoint(out / "checkpoints").step == 4
    assert json.loads((out / "run.json").read_text())["status"] == "diverged"


def test_existing_run_needs_resume(tmp_path, capsys):
    args = ["train", "vae", "--data", "ring8", *TINY_VAE, *FAST_TRAIN, "train.steps=1", "--out", tmp_path / "r"]
    assert run_cli(*args) == 0
    assert run_cli(*args) == 2
    assert "--resume" in capsys.readouterr().err


def test_grad_accumulation_matches_a_bigger_batch_on_images(tmp_path):
    """2 micro-batches of 8 == one batch of 16 through the U-Net (toys of every family: tests/test_contract.py)."""
    common = ["ddpm", "--data", "digits", *TINY_DDPM, *FAST_TRAIN, "train.steps=2", "train.ema_decay=0",
              "model.dropout=0"]
    assert run_cli("train", *common, "--out", tmp_path / "a", "train.batch_size=16") == 0
    assert run_cli("train", *common, "--out", tmp_path / "b", "train.batch_size=8", "train.grad_accum=2") == 0
    _, ta = final_tensors(tmp_path / "a")
    _, tb = final_tensors(tmp_path / "b")
    for k in ta:
        if k.startswith("model/"):
            assert torch.allclose(ta[k], tb[k], atol=1e-5), k


def test_lr_schedule_warmup_then_decay():
    from genlab.config import TrainConfig
    from genlab.training.loop import lr_scale

    tc = TrainConfig(steps=110, warmup_steps=10, lr_schedule="linear")
    assert [lr_scale(s, tc) for s in (0, 9)] == [0.1, 1.0]
    assert lr_scale(10, tc) == 1.0 and abs(lr_scale(60, tc) - 0.5) < 1e-12 and abs(lr_scale(109, tc) - 0.01) < 1e-12
    tc.lr_schedule = "cosine"
    assert lr_scale(10, tc) == 1.0 and abs(lr_scale(60, tc) - 0.5) < 1e-12 and lr_scale(109, tc) < 1e-3
    tc.lr_schedule = "constant"
    assert lr_scale(109, tc) == 1.0


def test_max_minutes_stops_early_with_a_checkpoint_and_samples(tmp_path):
    import json

    from conftest import FAST_TRAIN, TINY_VAE, run_cli

    out = tmp_path / "timed"
    assert run_cli("train", "vae", "--data", "digits", *TINY_VAE, *FAST_TRAIN, "train.steps=100000",
                   "train.max_minutes=0.000001", "--out", out) == 0
    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "done" and info["step"] == 1
    assert (out / "checkpoints" / "step-0000001.json").exists() and (out / "samples" / "step-0000001.png").exists()
    assert info["train_cpu_s"] > 0 and info["train_s"] > 0  # wall and CPU time of the training loop
