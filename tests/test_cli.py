"""`genlab` end to end on digits, the Python API, and every bad input's error."""

import subprocess
import sys

import pytest
import torch
from conftest import FAST_TRAIN, TINY_DDPM, TINY_VAE, run_cli

import genlab
from genlab.data.png import load_png


@pytest.fixture(scope="module")
def ddpm_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "ddpm-digits"
    code = run_cli("train", "ddpm", "--data", "digits", *TINY_DDPM, *FAST_TRAIN, "train.steps=4", "train.sample_every=2",
                   "model.class_cond=true", "--out", out)
    assert code == 0
    return out


def test_train_writes_a_complete_run(ddpm_run):
    for name in ("config.yaml", "metrics.jsonl", "run.json", "report.html", "samples/step-0000002.png",
                 "samples/step-0000004.png", "checkpoints/step-0000004.json", "checkpoints/step-0000004.safetensors",
                 "report/losses.png", "report/denoising.png"):
        assert (ddpm_run / name).exists(), name
    html = (ddpm_run / "report.html").read_text()
    assert "denoising" in html and "losses.png" in html and "Resolved config" in html and "Metrics" in html


def test_sample_grid_and_folder(ddpm_run, tmp_path):
    assert run_cli("sample", ddpm_run, "--n", "6", "--steps", "3", "--out", tmp_path / "g.png") == 0
    assert load_png(tmp_path / "g.png").dtype == torch.uint8
    assert run_cli("sample", ddpm_run, "--n", "3", "--sampler", "ddpm", "--steps", "3", "--class", "7",
                   "--out", tmp_path / "dir") == 0
    files = sorted((tmp_path / "dir").glob("*.png"))
    assert len(files) == 3 and load_png(files[0]).shape == (1, 8, 8)


def test_python_api(ddpm_run):
    run = genlab.load(ddpm_run)
    a = run.sample(4, seed=1, steps=3)
    b = run.sample(4, seed=1, steps=3)
    assert a.shape == (4, 1, 8, 8) and torch.equal(a, b) and a.min() >= -1 and a.max() <= 1
    assert run.step == 4 and run.family_name == "ddpm"
    sevens = run.sample(2, seed=0, steps=3, cond=torch.tensor([7, 7]))
    assert sevens.shape == (2, 1, 8, 8)
    with pytest.raises(genlab.errors.UsageError, match="takes no 'temperature'"):
        run.sample(2, temperature=0.5)


def test_report_and_list(ddpm_run, capsys):
    (ddpm_run / "report.html").unlink()
    assert run_cli("report", ddpm_run) == 0
    assert (ddpm_run / "report.html").exists()
    assert run_cli("list") == 0
    out = capsys.readouterr().out
    assert "ddpm" in out and "vae" in out and "fashion-mnist" in out and "ddim" in out


def test_vae_run_end_to_end(tmp_path):
    out = tmp_path / "vae"
    assert run_cli("train", "vae", "--data", "digits", *TINY_VAE, *FAST_TRAIN, "train.steps=3", "--out", out) == 0
    assert (out / "report" / "reconstructions.png").exists()
    run = genlab.load(out)
    assert run.sample(5, seed=0).shape == (5, 1, 8, 8)


def test_toy_run_reports_a_scatter(tmp_path):
    out = tmp_path / "toy"
    assert run_cli("train", "ddpm", "--data", "grid25", *TINY_DDPM, *FAST_TRAIN, "train.steps=2", "--out", out) == 0
    assert list((out / "report").glob("*points.png"))
    assert genlab.load(out).sample(10, seed=0, steps=2).shape == (10, 2)


def test_dry_run_prints_config_and_trains_nothing(tmp_path, capsys):
    assert run_cli("train", "vae", "--data", "moons", "model.beta=0.5", "--out", tmp_path / "d", "--dry-run") == 0
    out = capsys.readouterr().out
    assert "beta: 0.5" in out and "name: moons" in out
    assert not (tmp_path / "d").exists()


def test_presets_parse():
    from genlab.cli import CONFIG_DIR
    from genlab.config import build_run_config, load_yaml
    from genlab.models import get_family

    presets = sorted(CONFIG_DIR.glob("*.yaml"))
    assert len(presets) >= 6
    for p in presets:
        raw = load_yaml(p)
        build_run_config(raw["family"], get_family(raw["family"]).Config, raw)


@pytest.mark.parametrize(
    "args,message",
    [
        (["train", "glow"], "unknown family 'glow'; expected one of: ae, autoencoder-kl, bicyclegan, classifier, consistency, "
                            "cyclegan, ddgan, ddpm, distill, flow, gan, gmm, lcm, ldm, pix2pix, pixelcnn, progan, stargan, "
                            "stylegan, vae, vqvae"),
        (["train", "ddpm", "--data", "cifar"], "unknown dataset 'cifar'; expected one of:"),
        (["train", "ddpm", "train.stepz=3"], "unknown config key 'train.stepz'"),
        (["train", "ddpm", "model.sampler=plms"], "config key 'model.sampler' expects one of: ddim, ddpm, euler, heun, dpmpp_2m; got 'plms'"),
        (["train", "ddpm", "--config", "no-such-preset"], "unknown preset 'no-such-preset'"),
        (["train", "ddpm", "train.mixed_precision=fp8", "train.steps=1"], "config key 'train.mixed_precision' expects one of: no, bf16, fp16; got 'fp8'"),
        (["train", "vae", "--data", "ring8", "model.decoder=poisson"], "config key 'model.decoder' expects one of: gaussian, bernoulli; got 'poisson'"),
        (["train", "ddpm", "--data", "ring8", "model.class_cond=true"], "ddpm needs class labels (y); 'ring8' has none"),
    ],
)
def test_bad_usage_exits_2_with_choices(args, message, capsys, tmp_path):
    assert run_cli(*args, *(["--out", tmp_path / "x"] if args[0] == "train" else [])) == 2
    assert message in capsys.readouterr().err


def test_sample_bad_inputs(ddpm_run, tmp_path, capsys):
    assert run_cli("sample", ddpm_run, "--sampler", "plms") == 2
    assert "expected one of: ddim, ddpm, dpmpp_2m, euler, heun" in capsys.readouterr().err
    assert run_cli("sample", tmp_path / "nope") == 1
    assert "run directory not found" in capsys.readouterr().err
    assert run_cli("sample", ddpm_run, "--class", "42", "--n", "2") == 2
    assert "class labels must be in 0..9" in capsys.readouterr().err


def test_real_exit_code_of_the_console_command(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "genlab", "train", "nope"], capture_output=True, text=True)
    assert proc.returncode == 2 and "unknown family 'nope'" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "genlab", "train", "ddpm", "--data", "mnist", "--data-dir",
                           str(tmp_path), "--out", str(tmp_path / "r")], capture_output=True, text=True,
                          env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 1 and "dataset 'mnist' not found" in proc.stderr


def test_sample_count_must_be_positive(ddpm_run, capsys):
    with pytest.raises(SystemExit) as e:
        run_cli("sample", ddpm_run, "--n", "0")
    assert e.value.code == 2 and "expected a number >= 1" in capsys.readouterr().err
