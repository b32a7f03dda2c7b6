"""Autoencoder family, denoising corruptions, anomaly metrics and `genlab anomaly` end to end."""

import json
import math

import numpy as np
import pytest
import torch
from conftest import FAST_TRAIN, plain_step, run_cli, spec_for

import genlab
from genlab.config import build_run_config
from genlab.data import load_dataset
from genlab.errors import UsageError
from genlab.metrics.anomaly import auprc, auroc, confusion, threshold_at_fpr
from genlab.models import ae, vae
from genlab.rng import SampleRNG

TINY_AE = ["model.channels=8", "model.latent_dim=4", "model.mlp_hidden=32"]


def _x(n=64, shape=(1, 16, 16)):
    return torch.rand(n, *shape, generator=torch.Generator().manual_seed(1)) * 1.6 - 0.8  # inside (-1, 1)


def test_corruption_none_is_identity():
    x = _x()
    assert torch.equal(ae.corrupt(x, "none", 0.5, SampleRNG(range(len(x)))), x)


def test_gaussian_corruption_adds_noise_of_the_given_std():
    x = torch.zeros(64, 1, 16, 16)
    x_t = ae.corrupt(x, "gaussian", 0.3, SampleRNG(range(64)))
    assert abs(x_t.std().item() - 0.3) < 0.01 and abs(x_t.mean().item()) < 0.01
    big = ae.corrupt(_x(), "gaussian", 5.0, SampleRNG(range(64)))
    assert big.min() >= -1 and big.max() <= 1  # images stay in range


def test_mask_corruption_blacks_out_that_fraction_and_keeps_the_rest():
    x = _x()
    x_t = ae.corrupt(x, "mask", 0.25, SampleRNG(range(len(x))))
    changed = x_t != x
    assert abs(changed.float().mean().item() - 0.25) < 0.01
    assert (x_t[changed] == -1).all()
    pts = ae.corrupt(torch.ones(5000, 2), "mask", 0.5, SampleRNG(range(5000)))
    assert set(pts.unique().tolist()) == {0.0, 1.0}  # points are masked to 0


def test_salt_and_pepper_sets_half_to_min_and_half_to_max():
    x = _x()
    x_t = ae.corrupt(x, "salt-pepper", 0.2, SampleRNG(range(len(x))))
    assert abs((x_t == -1).float().mean().item() - 0.1) < 0.01
    assert abs((x_t == 1).float().mean().item() - 0.1) < 0.01
    keep = (x_t != -1) & (x_t != 1)
    assert torch.equal(x_t[keep], x[keep])


def test_corruption_is_per_sample_seeded():
    x = _x(8)
    a = ae.corrupt(x, "salt-pepper", 0.3, SampleRNG(range(8)))
    b = ae.corrupt(x[:4], "salt-pepper", 0.3, SampleRNG(range(4)))
    assert torch.equal(a[:4], b)


@pytest.mark.parametrize("shape,kw", [([1, 8, 8], dict(loss="mse", corruption="gaussian")),
                                      ([1, 28, 28], dict(loss="bce", corruption="mask")),
                                      ([2], dict(corruption="salt-pepper"))])
def test_ae_trains_encodes_decodes_and_refuses_to_sample(shape, kw):
    cfg = ae.Config(channels=8, latent_dim=3, mlp_hidden=16, **kw)
    model = ae.build(cfg, spec_for(shape), {})
    assert model.data_shape == shape and model.spec == spec_for(shape) and ae.needs(cfg) == ("x",)
    opts = ae.make_optimizers(model, cfg)
    x = torch.rand(6, *shape) * 2 - 1
    before = [p.detach().clone() for p in model.parameters()]
    logs = plain_step(ae, model, {"x": x}, opts)
    assert math.isfinite(logs["loss"])
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    z = ae.encode(model, x)
    assert z.shape == (6, 3) and ae.decode(model, z).shape == x.shape
    assert ae.anomaly_score(model, x).shape == (6,)
    with pytest.raises(ValueError, match="no prior"):
        ae.sample(model, 2)
    assert ae.SAMPLERS == () and ae.SAMPLE_OPTIONS == ()
    images = ae.report_images(model, {"x": x}, torch.Generator().manual_seed(0))
    if len(shape) == 3:  # originals over reconstructions; corrupted inputs over denoised over clean
        assert images["reconstructions"].shape == (2, 6, *shape) and torch.equal(images["reconstructions"][0], x)
        assert images["denoised"].shape == (3, 6, *shape) and torch.equal(images["denoised"][2], x)
    else:
        assert images == {}


def test_unknown_choices_are_config_errors():
    with pytest.raises(UsageError, match="'model.corruption' expects one of: none, gaussian, mask, salt-pepper; got 'blur'"):
        build_run_config("ae", ae.Config, {"model": {"corruption": "blur"}})
    with pytest.raises(UsageError, match="'model.loss' expects one of: mse, bce; got 'l1'"):
        build_run_config("ae", ae.Config, {"model": {"loss": "l1"}})
    with pytest.raises(ValueError, match="unknown corruption 'blur'"):
        ae.corrupt(_x(), "blur", 0.1, SampleRNG(range(64)))


def test_auroc_and_auprc_equal_scikit_learn_with_ties():
    from sklearn.metrics import average_precision_score, roc_auc_score

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 500)
    scores = np.round(rng.normal(size=500) + labels, 1)  # rounding makes many ties
    assert auroc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert auprc(scores, labels) == pytest.approx(average_precision_score(labels, scores), abs=1e-12)
    assert auroc([0.1, 0.2, 0.9, 0.8], [0, 0, 1, 1]) == 1.0 and auroc([1, 1, 1, 1], [0, 1, 0, 1]) == 0.5
    with pytest.raises(ValueError, match="both normal"):
        auroc([0.1, 0.2], [1, 1])
    with pytest.raises(ValueError, match="NaN"):
        auroc([0.1, float("nan")], [0, 1])


def test_threshold_from_target_fpr_gives_that_fpr_on_the_held_out_normals():
    normals = np.random.default_rng(1).normal(size=1000)
    for fpr in (0.01, 0.05, 0.2):
        t = threshold_at_fpr(normals, fpr)
        assert (normals > t).mean() == pytest.approx(fpr)
    assert (normals > threshold_at_fpr(normals, 0.0)).sum() == 0
    assert (normals > threshold_at_fpr(normals, 1.0)).all()
    c = confusion([0.1, 0.5, 0.9, 0.2], [0, 0, 1, 1], 0.3)
    assert (c["tn"], c["fp"], c["fn"], c["tp"]) == (1, 1, 1, 1) and c["fpr"] == 0.5


def test_vae_anomaly_score_is_negative_elbo_and_seeded():
    cfg = vae.Config(channels=8, latent_dim=3)
    model = vae.build(cfg, spec_for([1, 8, 8]), {})
    x = torch.rand(5, 1, 8, 8) * 2 - 1
    s = vae.anomaly_score(model, x, generator=torch.Generator().manual_seed(0), k=2000)
    assert torch.equal(s, vae.anomaly_score(model, x, generator=torch.Generator().manual_seed(0), k=2000))
    mu, logvar = model.encode(x)
    eps = torch.randn(5, 20000, 3)
    z = mu[:, None] + (0.5 * logvar).exp()[:, None] * eps
    rec = vae.log_px_given_z(model, model.decode(z.reshape(-1, 3)), x.repeat_interleave(20000, 0)).reshape(5, -1)
    elbo = rec.mean(1) - vae.kl_standard_normal(mu, logvar)
    assert torch.allclose(s, -elbo, rtol=2e-3)


def test_keep_classes_and_holdout_split():
    data = load_dataset("digits")
    one = data.keep_classes([3])
    assert (one.y == 3).all() and len(one) == int((data.y == 3).sum()) and one.classes == data.classes
    held, rest = one.holdout_split(0.2, "holdout"), one.holdout_split(0.2, "train")
    assert len(held) + len(rest) == len(one) and len(held) == round(0.2 * len(one))
    both = torch.cat([held.x, rest.x]).flatten(1)
    assert len(torch.unique(both, dim=0)) == len(torch.unique(one.x.flatten(1), dim=0))  # disjoint, complete
    assert torch.equal(held.x, one.holdout_split(0.2, "holdout").x)  # fixed
    with pytest.raises(ValueError, match="not in 0..9"):
        data.keep_classes([12])


@pytest.fixture(scope="module")
def oneclass_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "ae-digits-0"
    assert run_cli("train", "ae", "--data", "digits", *TINY_AE, *FAST_TRAIN, "train.steps=30", "model.corruption=mask",
                   "data.classes=0", "data.holdout=0.25", "--out", out) == 0
    return out


def test_oneclass_training_uses_only_that_class_minus_the_holdout(oneclass_run):
    run = genlab.load(oneclass_run)
    from genlab.training.data import load_data

    assert len(load_data(run.config)) + len(load_data(run.config, "holdout")) == int((load_dataset("digits").y == 0).sum())
    assert (oneclass_run / "report" / "reconstructions.png").exists()
    assert not list((oneclass_run / "samples").glob("*.png"))  # an AE draws no sample grids


def test_anomaly_cli_reports_auroc_threshold_and_picture(oneclass_run, tmp_path, capsys):
    assert run_cli("anomaly", oneclass_run, "--fpr", "0.1", "--out", tmp_path) == 0
    printed = capsys.readouterr().out
    assert "AUROC" in printed and "flagged anomalous" in printed
    r = json.loads((tmp_path / "digits-test.json").read_text())
    test_y = load_dataset("digits", "test").y
    assert r["n_normal"] == int((test_y == 0).sum()) and r["n_anomalous"] == int((test_y != 0).sum())
    assert 0 <= r["auroc"] <= 1 and 0 <= r["auprc"] <= 1 and "held-out" in r["threshold_from"]
    c = r["at_threshold"]
    assert c["tn"] + c["fp"] == r["n_normal"] and c["tp"] + c["fn"] == r["n_anomalous"]
    assert (tmp_path / "digits-test.png").exists()
    # the calibration really gives the target FPR on the held-out normals
    run = genlab.load(oneclass_run)
    from genlab.anomaly import score
    from genlab.training.data import load_data

    held = load_data(run.config, "holdout")
    s = score(run, held.get(torch.arange(len(held)))[0], seed=1, progress=False)
    assert (s > r["threshold"]).float().mean().item() <= 0.1 + 1e-9
    assert run_cli("anomaly", oneclass_run, "--threshold", "1e9", "--normal", "0,1", "--out", tmp_path) == 0
    r2 = json.loads((tmp_path / "digits-test.json").read_text())
    assert r2["at_threshold"]["tp"] == 0 and r2["normal_classes"] == [0, 1]


def test_anomaly_cli_errors(tmp_path, capsys):
    out = tmp_path / "ae"
    assert run_cli("train", "ae", "--data", "digits", *TINY_AE, *FAST_TRAIN, "train.steps=2", "--out", out) == 0
    assert run_cli("anomaly", out) == 2
    assert "--normal" in capsys.readouterr().err
    assert run_cli("anomaly", out, "--normal", "3") == 2
    assert "data.holdout" in capsys.readouterr().err
    assert run_cli("train", "ae", "--data", "digits", "data.classes=x", "--out", tmp_path / "bad") == 2
    assert "data.classes" in capsys.readouterr().err


def test_report_shows_latents_interpolations_and_denoising(oneclass_run):
    assert run_cli("report", oneclass_run, "--latent", "tsne") == 0
    html = (oneclass_run / "report.html").read_text()
    for name in ("latents.png", "interpolations.png", "reconstructions.png", "denoised.png"):
        assert (oneclass_run / "report" / name).exists() and name in html
    assert "TSNE of 4-d latents" in html
