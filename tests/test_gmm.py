"""The GMM family: parity with scikit-learn's density, per-sample seeding, moments, likelihood units, and runs
through the CLI on points, pixels and a trained VAE's latents."""

import json
import math
import shutil
import typing

import numpy as np
import pytest
import torch
from conftest import FAST_TRAIN, TINY_VAE, run_cli, spec_for
from sklearn.mixture import GaussianMixture

import genlab
from genlab.config import RunConfig, build_run_config, check, set_dotted
from genlab.errors import GenlabError, UsageError
from genlab.metrics.likelihood import bits_per_dim, nats_from_bits_per_dim
from genlab.models import gmm

COVARIANCE_TYPES = typing.get_args(typing.get_type_hints(gmm.Config)["covariance_type"])


def _build(shape, **kw):
    return gmm.build(gmm.Config(**kw), spec_for(shape), {})


def _blobs(n=300, seed=0):
    """Three anisotropic 3-D clusters."""
    g = torch.Generator().manual_seed(seed)
    A = torch.tensor([[1.0, 0.5, 0.0], [0.0, 1.0, 0.3], [0.0, 0.0, 0.4]])
    parts = [torch.randn(n // 3, 3, generator=g) @ (s * A) + c for s, c in ((0.5, 2.0), (1.0, -1.0), (0.3, 0.0))]
    return torch.cat(parts)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_log_prob_equals_sklearn_score_samples(covariance_type):
    x, x_new = _blobs(seed=0), _blobs(60, seed=1)
    model = _build([3], n_components=3, covariance_type=covariance_type)
    logs = gmm.fit(model, {"x": x}, seed=7)
    ref = GaussianMixture(3, covariance_type=covariance_type, random_state=7).fit(x.double().numpy())
    assert np.allclose(model.means.numpy(), ref.means_) and logs["log_prob"] == pytest.approx(ref.lower_bound_)
    for pts in (x, x_new):
        expected = torch.from_numpy(ref.score_samples(pts.double().numpy()))
        got = gmm.log_prob(model, gmm.features(model, pts))
        assert got.dtype == torch.float64
        assert torch.allclose(got, expected, rtol=1e-8, atol=0), (got - expected).abs().max()
    assert gmm.log_likelihood(model, x_new).equal(gmm.log_prob(model, x_new.double()))  # points: no offset


def _known_mixture(covariance_type):
    """A 2-component 2-D mixture set by hand, with its exact mean and covariance."""
    model = _build([2], n_components=2, covariance_type=covariance_type)
    w, mu = torch.tensor([0.3, 0.7], dtype=torch.float64), torch.tensor([[2.0, -1.0], [-1.0, 0.5]], dtype=torch.float64)
    full = torch.tensor([[[0.5, 0.2], [0.2, 0.3]], [[0.2, -0.1], [-0.1, 0.4]]], dtype=torch.float64)
    cov = {"full": full, "tied": full[0], "diag": full.diagonal(dim1=1, dim2=2),
           "spherical": torch.tensor([0.25, 0.6], dtype=torch.float64)}[covariance_type]
    model.weights.copy_(w), model.means.copy_(mu), model.covariances.copy_(cov)
    sigmas = {"full": full, "tied": full[0].expand(2, 2, 2), "diag": torch.diag_embed(cov),
              "spherical": cov[:, None, None] * torch.eye(2, dtype=torch.float64)}[covariance_type]
    mean = (w[:, None] * mu).sum(0)
    second = (w[:, None, None] * (sigmas + mu[:, :, None] * mu[:, None, :])).sum(0)
    return model, mean, second - mean[:, None] * mean[None, :]


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_sample_moments_match_the_mixture(covariance_type):
    model, mean, cov = _known_mixture(covariance_type)
    s = gmm.sample(model, 20000, generator=torch.Generator().manual_seed(0)).double()
    assert s.shape == (20000, 2)
    assert torch.allclose(s.mean(0), mean, atol=0.03)
    assert torch.allclose(torch.cov(s.T), cov, atol=0.05)


@pytest.mark.parametrize("covariance_type", ["full", "diag"])
def test_sampling_is_seeded_per_sample(covariance_type):
    model, _, _ = _known_mixture(covariance_type)
    a = gmm.sample(model, 10, generator=torch.Generator().manual_seed(3))
    b = gmm.sample(model, 5, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(a[:5], b, atol=1e-6, rtol=0)
    assert not torch.allclose(a[:5], gmm.sample(model, 5, generator=torch.Generator().manual_seed(4)))
    with pytest.raises(ValueError, match="unknown sampler 'ddim'"):
        gmm.sample(model, 2, sampler="ddim")
    with pytest.raises(ValueError, match="unconditional"):
        gmm.sample(model, 2, cond=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="unconditional"):
        gmm.sample(model, 2, cond={"y": torch.tensor([0, 1])})


def test_pixel_log_likelihood_and_bits_per_dim_round_trip():
    from genlab.data import load_dataset

    data = load_dataset("digits", "train")
    batch = data.batch(torch.arange(len(data)))
    x = batch["x"]
    model = gmm.build(gmm.Config(n_components=5, covariance_type="diag", reg_covar=1e-3), data.spec, {})
    gmm.fit(model, batch, seed=0)  # labels in the batch are ignored
    ll = gmm.log_likelihood(model, x[:50])
    # images: the density on [-1, 1] times one 8-bit bin per dimension
    assert torch.allclose(ll, gmm.log_prob(model, x[:50].flatten(1).double()) + 64 * math.log(2 / 256), rtol=1e-12)
    bpd = bits_per_dim(ll, 64)
    assert torch.allclose(nats_from_bits_per_dim(bpd, 64), ll, rtol=1e-12)
    assert 0 < bpd.mean() < 8  # fewer bits than storing the raw 8-bit pixels
    s = gmm.sample(model, 6, generator=torch.Generator().manual_seed(0))
    assert s.shape == (6, 1, 8, 8) and s.min() >= -1 and s.max() <= 1


def test_contract_and_bad_config():
    model = _build([2], n_components=2)
    assert model.data_shape == [2] and model.spec == spec_for([2]) and gmm.needs(model.cfg) == ("x",)
    assert gmm.make_optimizers(model, model.cfg) == {} and not list(model.parameters())
    assert all(b.dtype == torch.float64 for b in model.buffers())
    with pytest.raises(RuntimeError, match="closed form"):
        gmm.train_step(model, {"x": torch.zeros(2, 2)}, {}, None)
    with pytest.raises(ValueError, match="n_components must be >= 1"):
        _build([2], n_components=0)
    # choices are checked where configs are made: from YAML / overrides, and by check() for Python-built ones
    msg = "config key 'model.covariance_type' expects one of: full, diag, tied, spherical; got 'ful'"
    with pytest.raises(UsageError, match=msg):
        build_run_config("gmm", gmm.Config, {"model": {"covariance_type": "ful"}})
    cfg = build_run_config("gmm", gmm.Config, {})
    with pytest.raises(UsageError, match=msg):
        set_dotted(cfg, "model.covariance_type", "ful")
    assert cfg.model.covariance_type == "full"
    with pytest.raises(UsageError, match=msg):
        check(RunConfig(family="gmm", model=gmm.Config(covariance_type="ful")))


def test_max_fit_uses_a_seeded_subset():
    x = _blobs(300)
    a, b, c = (_build([3], n_components=2, max_fit=50) for _ in range(3))
    gmm.fit(a, {"x": x}, seed=1), gmm.fit(b, {"x": x}, seed=1), gmm.fit(c, {"x": x}, seed=2)
    assert torch.equal(a.means, b.means) and not torch.equal(a.means, c.means)


def test_toy_run_end_to_end_steps_and_resume(tmp_path, capsys):
    out = tmp_path / "ring"
    args = ["train", "gmm", "--data", "ring8", "data.toy_size=4000", "model.n_components=8", "train.steps=50",
            "train.trackers=none", "train.n_samples=200", "--out", out]
    assert run_cli(*args) == 0
    files = {p.name: p.stat().st_mtime_ns for p in (out / "checkpoints").iterdir()}
    assert set(files) == {"step-0000001.json", "step-0000001.safetensors"}  # one fit, whatever train.steps says
    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "done" and info["step"] == 1
    assert (out / "samples" / "step-0000001.safetensors").exists() and (out / "report.html").exists()
    run = genlab.load(out)
    s = run.sample(400, seed=0)
    assert s.shape == (400, 2) and torch.allclose(s.norm(dim=1).mean(), torch.tensor(1.0), atol=0.05)  # the ring
    assert torch.equal(s[:10], run.sample(10, seed=0))

    assert run_cli(*args) == 2  # a finished run is not overwritten
    assert "already holds a run" in capsys.readouterr().err
    assert run_cli(*args, "--resume") == 0  # resuming a finished fit does nothing
    assert {p.name: p.stat().st_mtime_ns for p in (out / "checkpoints").iterdir()} == files


def test_pixel_run_on_digits(tmp_path):
    out = tmp_path / "digits"
    assert run_cli("train", "gmm", "--data", "digits", "model.covariance_type=diag", "model.reg_covar=1e-3",
                   "train.trackers=none", "train.n_samples=16", "--out", out) == 0
    assert (out / "samples" / "step-0000001.png").exists()
    run = genlab.load(out)
    x = run.sample(5, seed=0)
    assert x.shape == (5, 1, 8, 8) and x.min() >= -1 and x.max() <= 1
    assert run.model.covariances.shape == (10, 64)


def test_latent_gmm_on_a_trained_vae(tmp_path):
    vae_dir = tmp_path / "vae"
    assert run_cli("train", "vae", "--data", "digits", *TINY_VAE, *FAST_TRAIN, "train.steps=2", "--out", vae_dir) == 0
    out = tmp_path / "latent"
    assert run_cli("train", "gmm", "--data", "digits", f"model.autoencoder={vae_dir}", "model.n_components=3",
                   "train.trackers=none", "train.n_samples=8", "--out", out) == 0
    run = genlab.load(out)
    x = run.sample(4, seed=0)
    assert x.shape == (4, 1, 8, 8) and x.min() >= -1 and x.max() <= 1
    assert run.model.means.shape == (3, 4)  # latent_dim 4
    # the autoencoder is a frozen dependency: the run keeps one copy of it (RUN/deps/autoencoder, the weights
    # actually used: the VAE's EMA weights) and its checkpoints hold the mixture's buffers only
    vae_run = genlab.load(vae_dir)
    saved = run.checkpoint.part("model")
    assert set(saved) == {"weights", "means", "covariances", "precisions_cholesky"}
    assert not any(k.startswith("autoencoder.") for k in run.checkpoint.tensors if not k.startswith("rng/"))
    assert set(run.deps) == {"autoencoder"} and run.deps["autoencoder"].family_name == "vae"
    stored = genlab.load(out / "deps" / "autoencoder")
    assert stored.step == vae_run.step and stored.spec == vae_run.spec
    vae_state, ae_state = vae_run.model.state_dict(), run.model.autoencoder.state_dict()
    assert set(ae_state) == set(vae_state)
    for k, v in vae_state.items():
        assert torch.equal(ae_state[k], v), k
        assert torch.equal(stored.model.state_dict()[k], v), k
    rec = run.checkpoint.meta["deps"]["autoencoder"]
    assert rec["source"] == str(vae_dir.resolve()) and rec["source_sha256"] == vae_run.checkpoint.meta["sha256"]
    assert rec["sha256"] == stored.checkpoint.meta["sha256"] and rec["family"] == "vae"
    assert not any(p.requires_grad for p in run.model.parameters())
    with pytest.raises(ValueError, match="density of latents"):
        gmm.log_likelihood(run.model, torch.zeros(2, 1, 8, 8))

    # the run stays loadable and sampleable, with the same samples, when the autoencoder's run folder moves
    shutil.move(vae_dir, tmp_path / "vae-moved")
    moved = genlab.load(out)
    assert torch.equal(moved.sample(4, seed=0), x)
    assert torch.equal(moved.model.means, run.model.means)



def test_latent_gmm_config_errors(tmp_path, capsys):
    vae_dir = tmp_path / "vae"
    assert run_cli("train", "vae", "--data", "digits", *TINY_VAE, *FAST_TRAIN, "train.steps=2", "--out", vae_dir) == 0
    capsys.readouterr()
    assert run_cli("train", "gmm", "--data", "ring8", f"model.autoencoder={vae_dir}", "--out", tmp_path / "bad") == 2
    assert "was trained on data of shape [1, 8, 8], not [2]" in capsys.readouterr().err
    # a run refused before it started leaves nothing in --out that stops the same --out being used again
    assert run_cli("train", "gmm", "--data", "digits", f"model.autoencoder={tmp_path}", "--out", tmp_path / "bad") == 2
    assert "is not a run directory" in capsys.readouterr().err


def test_latent_gmm_with_a_missing_or_altered_stored_autoencoder_is_an_error(tmp_path):
    vae_dir = tmp_path / "vae"
    assert run_cli("train", "vae", "--data", "digits", *TINY_VAE, *FAST_TRAIN, "train.steps=2", "--out", vae_dir) == 0
    out = tmp_path / "latent"
    assert run_cli("train", "gmm", "--data", "digits", f"model.autoencoder={vae_dir}", "model.n_components=2",
                   "train.trackers=none", "train.n_samples=4", "--out", out) == 0
    stored = out / "deps" / "autoencoder"
    shutil.move(stored, tmp_path / "elsewhere")
    with pytest.raises(GenlabError, match="dependency 'autoencoder' .* is missing"):
        genlab.load(out)
    shutil.move(tmp_path / "elsewhere", stored)
    genlab.load(out)
    # a stored copy replaced by another (valid) run is refused: its tensors' hash is not the recorded one
    assert run_cli("train", "vae", "--data", "digits", *TINY_VAE, *FAST_TRAIN, "train.steps=3", "train.seed=1",
                   "--out", tmp_path / "vae2") == 0
    shutil.rmtree(stored)
    shutil.copytree(tmp_path / "vae2", stored)
    with pytest.raises(GenlabError, match="dependency 'autoencoder' .* was changed"):
        genlab.load(out)


def test_eval_cli_reports_test_likelihood_in_bits_per_dim(tmp_path, capsys):
    from genlab.data import load_dataset

    out = tmp_path / "gmm-digits"
    assert run_cli("train", "gmm", "--data", "digits", "model.n_components=3", "model.covariance_type=diag",
                   "model.reg_covar=1e-3", "train.trackers=none", "--out", out) == 0
    assert run_cli("eval", out, "--metrics", "fid,nll", "--n", "200", "--json", tmp_path / "r.json") == 0
    assert "bits_per_dim" in capsys.readouterr().out
    r = json.loads((tmp_path / "r.json").read_text())["result"]
    run = genlab.load(out)
    test = load_dataset("digits", "test")
    ll = gmm.log_likelihood(run.model, test.get(torch.arange(len(test)))[0]).mean()
    assert r["nll_nats"] == pytest.approx(-ll.item(), rel=1e-9)
    assert r["bits_per_dim"] == pytest.approx(float(bits_per_dim(ll, 64)), rel=1e-9)


def test_anomaly_score_is_negative_log_density_and_works_in_genlab_anomaly(tmp_path, capsys):
    out = tmp_path / "gmm-digit0"
    assert run_cli("train", "gmm", "--data", "digits", "model.n_components=2", "model.covariance_type=diag",
                   "model.reg_covar=1e-2", "data.classes=0", "train.trackers=none", "--out", out) == 0
    run = genlab.load(out)
    x = torch.rand(4, 1, 8, 8) * 2 - 1
    assert torch.allclose(gmm.anomaly_score(run.model, x), -gmm.log_prob(run.model, x.flatten(1).double()))
    assert run_cli("anomaly", out, "--threshold", "0", "--out", tmp_path / "a") == 0
    r = json.loads((tmp_path / "a" / "digits-test.json").read_text())
    assert r["auroc"] > 0.9  # digit 0 against the other nine, by pixel density: an easy case
