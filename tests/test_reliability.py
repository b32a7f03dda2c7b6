"""Each defect found by testing the loop as a user would, and what must happen instead (issue: contract v2)."""

import json
import os
import signal

import pytest
import torch
from conftest import FAST_TRAIN, run_cli

from genlab.training.checkpoint import latest_checkpoint

VAE = ["vae", "--data", "ring8", "model.mlp_hidden=16", "model.latent_dim=2", *FAST_TRAIN, "train.trackers=none"]


def status(out):
    return json.loads((out / "run.json").read_text())


def test_a_kill_during_the_first_save_leaves_a_run_that_restarts(tmp_path, monkeypatch, capsys):
    from genlab.training import checkpoint

    real = checkpoint.save_file

    def killed(tensors, path):  # the process dies half-way through writing the first tensor file
        with open(path, "wb") as f:
            f.write(b"\0" * 100)
        raise KeyboardInterrupt

    out = tmp_path / "r"
    monkeypatch.setattr(checkpoint, "save_file", killed)
    assert run_cli("train", *VAE, "train.steps=2", "--out", out) == 130
    assert status(out)["status"] == "interrupted"
    assert latest_checkpoint(out / "checkpoints") is None
    monkeypatch.setattr(checkpoint, "save_file", real)
    # a fresh `train` into the same folder starts afresh, and says so
    assert run_cli("train", *VAE, "train.steps=2", "--out", out) == 0
    assert "no valid checkpoint yet" in capsys.readouterr().err
    assert latest_checkpoint(out / "checkpoints").step == 2
    assert not [p for p in (out / "checkpoints").iterdir() if ".tmp" in p.name]


def test_resume_without_a_checkpoint_starts_from_scratch(tmp_path, capsys):
    out = tmp_path / "new"
    assert run_cli("train", *VAE, "train.steps=2", "--out", out, "--resume") == 0
    assert "no run there yet; starting from step 0" in capsys.readouterr().err
    assert status(out)["status"] == "done" and status(out)["step"] == 2


def test_temp_files_of_interrupted_saves_are_cleaned_up(tmp_path):
    out = tmp_path / "r"
    assert run_cli("train", *VAE, "train.steps=2", "--out", out) == 0
    ck = out / "checkpoints"
    junk = [ck / ".step-0000003.safetensors.tmp4242", ck / ".step-0000003.json.tmp4242", ck / "step-0000004.safetensors"]
    for p in junk:
        p.write_bytes(b"x" * 1000)
    assert run_cli("train", *VAE, "train.steps=4", "--out", out, "--resume") == 0
    assert not any(p.exists() for p in junk[:2])
    assert latest_checkpoint(ck).step == 4


def test_damaged_run_json_and_torn_metrics_line_do_not_break_resume(tmp_path):
    out = tmp_path / "r"
    assert run_cli("train", *VAE, "train.steps=2", "--out", out) == 0
    (out / "run.json").write_text("")
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "loss": 1.2')  # torn by a crash
    assert run_cli("train", *VAE, "train.steps=3", "--out", out, "--resume") == 0
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [1, 2, 3]
    assert status(out)["status"] == "done"


def test_non_finite_weights_are_never_saved(tmp_path, monkeypatch, capsys):
    from genlab.models import vae

    real = vae.train_step

    def poisoned(model, batch, opts, ctx):
        logs = real(model, batch, opts, ctx)
        if ctx.step == 1:  # the second step's loss was finite, but the weights blew up
            next(ctx.unwrap(model).parameters()).data.fill_(float("inf"))
        return logs

    monkeypatch.setattr(vae, "train_step", poisoned)
    out = tmp_path / "r"
    assert run_cli("train", *VAE, "train.steps=4", "train.ckpt_every=1", "--out", out) == 1
    err = capsys.readouterr().err
    assert "weights became non-finite" in err and "step-0000001" in err
    assert latest_checkpoint(out / "checkpoints").step == 1
    assert status(out)["status"] == "diverged"


def test_an_exploding_finite_loss_is_divergence_with_the_familys_lr_keys(tmp_path, capsys):
    out = tmp_path / "gan"
    code = run_cli("train", "gan", "--data", "ring8", "model.mlp_hidden=16", *FAST_TRAIN, "train.steps=3",
                   "train.max_loss=1e-3", "--out", out)
    err = capsys.readouterr().err
    assert code == 1
    assert "train.max_loss" in err and "model.lr_g / model.lr_d" in err and "Traceback" not in err
    assert status(out)["status"] == "diverged"


def test_resume_refuses_architecture_and_data_changes_with_a_diff(tmp_path, capsys):
    out = tmp_path / "r"
    assert run_cli("train", *VAE, "train.steps=2", "--out", out) == 0
    assert run_cli("train", *VAE, "train.steps=4", "model.mlp_hidden=32", "--out", out, "--resume") == 2
    assert "model.mlp_hidden: 16 -> 32" in capsys.readouterr().err
    args = [a if a != "ring8" else "moons" for a in VAE]
    assert run_cli("train", *args, "train.steps=4", "--out", out, "--resume") == 2
    assert "data.name: 'ring8' -> 'moons'" in capsys.readouterr().err
    assert latest_checkpoint(out / "checkpoints").step == 2  # nothing was trained or written


def test_resume_applies_allowed_changes_and_keeps_the_runs_own_values(tmp_path, capsys):
    out = tmp_path / "r"
    assert run_cli("train", *VAE, "train.steps=2", "model.lr=1e-3", "--out", out) == 0
    assert run_cli("train", "vae", "--out", out, "--resume", "train.steps=4", "model.lr=5e-4") == 0
    err = capsys.readouterr().err
    assert "train.steps: 2 -> 4" in err and "model.lr: 0.001 -> 0.0005" in err
    ck = latest_checkpoint(out / "checkpoints")
    assert ck.step == 4 and ck.meta["config"]["model"]["lr"] == 5e-4
    assert ck.meta["optimizers"]["model"]["param_groups"][0]["lr"] == pytest.approx(5e-4)
    # the run's own values (data, network size, steps) hold when the command does not set them
    assert ck.meta["config"]["data"]["name"] == "ring8" and ck.meta["config"]["model"]["mlp_hidden"] == 16
    assert run_cli("train", "vae", "--out", out, "--resume") == 0
    assert latest_checkpoint(out / "checkpoints").step == 4 and status(out)["step"] == 4


def test_a_changed_adam_beta_is_applied_on_resume(tmp_path):
    gan = ["gan", "--data", "ring8", "model.mlp_hidden=16", *FAST_TRAIN]
    out = tmp_path / "g"
    assert run_cli("train", *gan, "train.steps=2", "--out", out) == 0
    assert run_cli("train", *gan, "train.steps=3", "model.beta1=0.9", "--out", out, "--resume") == 0
    groups = latest_checkpoint(out / "checkpoints").meta["optimizers"]
    assert groups["D"]["param_groups"][0]["betas"][0] == 0.9 and groups["G"]["param_groups"][0]["betas"][0] == 0.9


def test_out_into_a_folder_that_is_not_a_run_is_refused(tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.yaml").write_text("my own notes\n")
    assert run_cli("train", *VAE, "train.steps=1", "--out", mine) == 2
    assert "not a genlab run" in capsys.readouterr().err
    assert (mine / "config.yaml").read_text() == "my own notes\n" and sorted(os.listdir(mine)) == ["config.yaml"]


@pytest.mark.parametrize("override,message", [
    ("model.lr=nan", "expects a finite number"),
    ("model.lr=-1e-3", "model.lr must be a learning rate > 0"),
    ("train.batch_size=0", "train.batch_size must be >= 1"),
    ("train.steps=0", "train.steps must be >= 1"),
    ("train.steps=-5", "train.steps must be >= 1"),
])
def test_bad_numbers_are_usage_errors(tmp_path, capsys, override, message):
    assert run_cli("train", *VAE, override, "--out", tmp_path / "r") == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()


def test_yaml_section_that_is_not_a_mapping(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("train: 5\n")
    assert run_cli("train", "vae", "--config", cfg, "--dry-run") == 2
    assert "config section 'train' must be a mapping" in capsys.readouterr().err


def test_missing_data_dir_is_an_error(tmp_path, capsys):
    assert run_cli("train", *VAE, "--data-dir", tmp_path / "nope", "--dry-run") == 2
    assert "does not exist" in capsys.readouterr().err


def test_unwritable_out_is_a_clear_error(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert run_cli("train", *VAE, "train.steps=1", "--out", blocker / "run") == 1
    err = capsys.readouterr().err
    assert "cannot write the run" in err and "Traceback" not in err


def test_disk_full_during_a_save_keeps_the_last_checkpoint(tmp_path, monkeypatch, capsys):
    import errno

    from genlab.training import checkpoint

    out = tmp_path / "r"
    assert run_cli("train", *VAE, "train.steps=2", "--out", out) == 0

    def full(tensors, path):
        with open(path, "wb") as f:
            f.write(b"\0" * 10)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint, "save_file", full)
    assert run_cli("train", *VAE, "train.steps=4", "--out", out, "--resume") == 1
    err = capsys.readouterr().err
    assert "No space left on device" in err and "Traceback" not in err
    assert latest_checkpoint(out / "checkpoints").step == 2
    assert status(out)["status"] == "failed"
    assert not [p for p in (out / "checkpoints").iterdir() if ".tmp" in p.name]


def test_a_crash_leaves_run_json_failed_not_running(tmp_path, monkeypatch):
    from genlab.models import vae

    def boom(model, batch, opts, ctx):
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(vae, "train_step", boom)
    out = tmp_path / "r"
    with pytest.raises(RuntimeError):
        run_cli("train", *VAE, "train.steps=2", "--out", out)
    assert status(out)["status"] == "failed" and "simulated crash" in status(out)["error"]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_saves_a_checkpoint_at_the_next_step_and_resume_finishes(tmp_path, monkeypatch, capsys, sig):
    from genlab.models import vae

    real = vae.train_step

    def interrupted(model, batch, opts, ctx):
        if ctx.step == 2:
            signal.raise_signal(sig)  # the user presses Ctrl-C (or the scheduler sends SIGTERM) mid-step
        return real(model, batch, opts, ctx)

    monkeypatch.setattr(vae, "train_step", interrupted)
    out = tmp_path / "r"
    assert run_cli("train", *VAE, "train.steps=10", "train.ckpt_every=100", "--out", out) == 130
    err = capsys.readouterr().err
    assert "step-0000003.json" in err and "--resume" in err
    assert latest_checkpoint(out / "checkpoints").step == 3 and status(out)["status"] == "interrupted"
    monkeypatch.setattr(vae, "train_step", real)
    assert run_cli("train", "vae", "--out", out, "--resume") == 0
    assert status(out)["status"] == "done" and latest_checkpoint(out / "checkpoints").step == 10


def test_time_based_checkpoints(tmp_path):
    out = tmp_path / "r"
    assert run_cli("train", *VAE, "train.steps=3", "train.ckpt_every=1000", "train.ckpt_minutes=1e-9",
                   "train.keep_checkpoints=5", "--out", out) == 0
    assert sorted(p.name for p in (out / "checkpoints").glob("*.json")) == [
        "step-0000001.json", "step-0000002.json", "step-0000003.json"]


def test_steps_flag_gets_a_key_hint(capsys):
    with pytest.raises(SystemExit) as e:
        run_cli("train", "vae", "--steps", "50")
    assert e.value.code == 2
    assert "train.steps=" in capsys.readouterr().err


def test_a_choice_typo_fails_at_dry_run_listing_the_choices(capsys):
    assert run_cli("train", "gan", "model.loss=hinj", "--dry-run") == 2
    err = capsys.readouterr().err
    assert "model.loss" in err and "hinge" in err and "wgan-gp" in err


def test_dry_run_prints_what_the_data_provides(capsys):
    assert run_cli("train", "gan", "--data", "digits", "model.class_cond=true", "--dry-run") == 0
    out = capsys.readouterr().out
    assert "# data: digits: x (1, 8, 8); y (10 classes" in out and "# the family uses: x, y" in out
    assert "data_shape" not in out


def test_missing_condition_is_named_before_training(tmp_path, capsys):
    assert run_cli("train", "gan", "--data", "ring8", "model.class_cond=true", "--out", tmp_path / "r") == 2
    err = capsys.readouterr().err
    assert "gan needs class labels (y); 'ring8' has none; datasets with it: fashion-mnist" in err
    assert not (tmp_path / "r" / "checkpoints").exists()


def test_families_never_zero_grads_themselves():
    from pathlib import Path

    for p in (Path(__file__).resolve().parent.parent / "genlab" / "models").glob("*.py"):
        assert "zero_grad" not in p.read_text(), p.name


def test_a_g_phase_leaves_no_gradient_in_d():
    from conftest import spec_for

    from genlab.models import gan
    from genlab.rng import SampleRNG
    from genlab.training.context import StepContext

    model = gan.build(gan.Config(mlp_hidden=8), spec_for([2]), {})
    opts = gan.make_optimizers(model, model.cfg)
    batch = {"x": torch.randn(4, 2)}
    ctx = StepContext(model, opts, batch, SampleRNG(range(4)))
    before = [p.detach().clone() for p in model["D"].parameters()]
    ctx.update("G", lambda mb, rng: (gan.g_loss("nonsaturating", model["D"](model["G"](rng.randn(64)))), {}))
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, model["D"].parameters()))  # D did not move in G's phase


def test_train_step_sees_the_ema_network(tmp_path, monkeypatch):
    from genlab.models import vae

    real, seen = vae.train_step, []

    def spy(model, batch, opts, ctx):
        seen.append((ctx.ema, ctx.unwrap(model)))
        return real(model, batch, opts, ctx)

    monkeypatch.setattr(vae, "train_step", spy)
    assert run_cli("train", *VAE, "train.steps=3", "train.ema_decay=0.5", "--out", tmp_path / "r") == 0
    ema, model = seen[-1]
    assert ema is not None and ema is not model and not ema.training
    assert not any(p.requires_grad for p in ema.parameters())
    # after the second update the EMA lags the weights (decay 0.5): it is a separate, averaged copy
    assert any(not torch.equal(a, b) for a, b in zip(ema.parameters(), model.parameters()))
