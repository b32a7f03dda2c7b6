"""ProGAN family and the shared style layers: equalized LR, fade-in at alpha 0 and 1, the growth schedule,
minibatch stddev, unused layers' optimizer state, exact resume in the middle of a fade-in, bad input."""

import json
import math

import pytest
import torch
from conftest import FAST_TRAIN, plain_step, run_cli, spec_for

from genlab.models import progan
from genlab.nn.style import (
    EqualConv2d,
    EqualLinear,
    GrowingDiscriminator,
    downsample,
    minibatch_stddev,
    upsample,
)
from genlab.training.checkpoint import latest_checkpoint

TINY = dict(channels=8, min_channels=4, latent_dim=8, mbstd_group=2)


def build(shape=(3, 16, 16), **kw):
    torch.manual_seed(0)
    cfg = progan.Config(**{**TINY, **kw})
    return progan.build(cfg, spec_for(shape), {}), cfg


# ------------------------------------------------------------------------------------------- equalized LR


def test_equalized_lr_scales_at_run_time_by_he_constant():
    torch.manual_seed(0)
    lin = EqualLinear(256, 64)
    assert lin.scale == pytest.approx(math.sqrt(2) / math.sqrt(256))
    assert lin.weight.std().item() == pytest.approx(1.0, rel=0.05)  # stored weights ~ N(0, 1)
    x = torch.randn(5, 256)
    assert torch.allclose(lin(x), x @ (lin.weight * lin.scale).T + lin.bias)
    conv = EqualConv2d(16, 8, 3)
    assert conv.scale == pytest.approx(math.sqrt(2) / math.sqrt(16 * 9))
    plain = EqualLinear(256, 64, equalized=False)  # He init folded into the weights, no run-time scale
    assert plain.scale == 1.0 and plain.weight.std().item() == pytest.approx(math.sqrt(2 / 256), rel=0.05)
    mapped = EqualLinear(64, 64, lr_mul=0.01)  # StyleGAN's mapping layers: weights N(0, 1/lr_mul^2), scale c*lr_mul
    assert mapped.weight.std().item() == pytest.approx(100, rel=0.1)
    assert (mapped.weight * mapped.scale).std().item() == pytest.approx(math.sqrt(2 / 64), rel=0.1)


def test_equalized_lr_gives_every_layer_the_same_relative_adam_step():
    """Adam's first step moves each stored weight by ~lr; with the run-time scale c the *effective* weight moves
    by lr * c, i.e. the same fraction of its own scale in a wide and a narrow layer (ProGAN Sec. 4.1)."""
    torch.manual_seed(0)
    for eq in (True, False):
        rel = []
        for fan_in in (8, 512):
            lin = EqualLinear(fan_in, 4, equalized=eq)
            opt = torch.optim.Adam(lin.parameters(), lr=1e-2)
            w0 = (lin.weight * lin.scale).detach().clone()
            lin(torch.randn(16, fan_in)).pow(2).sum().backward()
            opt.step()
            rel.append(((lin.weight * lin.scale).detach() - w0).abs().mean() / w0.std())
        ratio = (rel[0] / rel[1]).item()
        if eq:
            assert ratio == pytest.approx(1.0, rel=0.1)
        else:  # without it the narrow layer learns sqrt(512 / 8) = 8 times slower, relatively
            assert ratio == pytest.approx(1 / 8, rel=0.2)


# ---------------------------------------------------------------------------------------------- fade-in


def test_schedule_stable_fade_stable():
    s = [progan.schedule(t, 3, 2) for t in range(12)]
    assert s == [(0, 1.0), (0, 1.0), (1, 0.0), (1, 0.5), (1, 1.0), (1, 1.0), (2, 0.0), (2, 0.5),
                 (2, 1.0), (2, 1.0), (2, 1.0), (2, 1.0)]
    assert progan.schedule(0, 3, 2, growing=False) == (2, 1.0)


def test_generator_fade_in_equals_old_resolution_at_0_and_new_at_1():
    model, cfg = build()
    G = model["G"]
    z = torch.randn(4, cfg.latent_dim)
    with torch.no_grad():
        old = G(z, 1, 1.0)  # 8x8
        assert torch.equal(G(z, 2, 0.0), upsample(old))  # alpha 0: exactly the old level, upsampled
        new = G(z, 2, 1.0)
        G.to_rgb[1].weight.add_(1.0)  # the old path's toRGB no longer matters at alpha 1
        assert torch.equal(G(z, 2, 1.0), new)
        mid = G(z, 2, 0.25)
        assert torch.allclose(mid, 0.75 * upsample(G(z, 1, 1.0)) + 0.25 * new, atol=1e-6)
    assert new.shape == (4, 3, 16, 16) and old.shape == (4, 3, 8, 8)


def test_discriminator_fade_in_equals_old_resolution_at_0_and_new_at_1():
    model, _ = build()
    D = model["D"]
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(D(x, 2, 0.0), D(downsample(x), 1, 1.0), atol=1e-6)
        new = D(x, 2, 1.0)
        D.from_rgb[1].weight.add_(1.0)
        assert torch.equal(D(x, 2, 1.0), new)
    r = torch.randn(2, 3, 16, 16)
    assert torch.equal(progan.reals_at(r, 1, 1.0), downsample(r))
    assert torch.equal(progan.reals_at(r, 2, 0.0), upsample(downsample(r)))


# --------------------------------------------------------------------------------------- minibatch stddev


def test_minibatch_stddev_shape_value_and_batch_split_invariance():
    torch.manual_seed(0)
    x = torch.randn(8, 5, 4, 4)
    y = minibatch_stddev(x, 4)
    assert y.shape == (8, 6, 4, 4) and torch.equal(y[:, :5], x)
    for g in range(2):
        grp = x[4 * g : 4 * g + 4]
        expect = (grp.var(0, unbiased=False) + 1e-8).sqrt().mean()
        assert torch.allclose(y[4 * g : 4 * g + 4, 5], expect.expand(4, 4, 4))
    assert torch.equal(torch.cat([minibatch_stddev(x[:4], 4), minibatch_stddev(x[4:], 4)]), y)  # split-invariant
    with pytest.raises(ValueError, match="does not split into minibatch-stddev groups of 4"):
        minibatch_stddev(x[:6], 4)


def test_discriminator_without_mbstd_has_no_extra_channel():
    d = GrowingDiscriminator(1, 8, channels=8, min_channels=8, mbstd=False, mbstd_group=4, equalized=True)
    assert d.final_conv.weight.shape[1] == 8 and d(torch.randn(3, 1, 8, 8)).shape == (3,)


# ------------------------------------------------------------------------------------------ training step


def test_step_logs_resolution_and_alpha_and_leaves_unused_layers_alone():
    model, cfg = build(phase_steps=2)
    opts = progan.make_optimizers(model, cfg)
    x = torch.rand(4, 3, 16, 16) * 2 - 1
    top = [p.detach().clone() for p in model["G"].to_rgb[2].parameters()]
    logs = plain_step(progan, model, {"x": x}, opts)
    assert logs["resolution"] == 4 and logs["alpha"] == 1.0 and int(model["G"].step) == 1
    assert all(torch.equal(a, b) for a, b in zip(top, model["G"].to_rgb[2].parameters()))  # 16x16 not in use yet
    assert all(p not in opts["G"].state for p in model["G"].to_rgb[2].parameters())  # no Adam state either
    assert all(p in opts["G"].state for p in model["G"].to_rgb[0].parameters())
    assert progan.sample(model, 3, generator=torch.Generator().manual_seed(0)).shape == (3, 3, 16, 16)


@pytest.mark.parametrize("loss", ["wgan-gp", "nonsaturating"])
def test_both_losses_train(loss):
    model, cfg = build(loss=loss, r1_gamma=1.0, growing=False, mbstd=False, equalized_lr=False, pixel_norm=False)
    opts = progan.make_optimizers(model, cfg)
    g0 = [p.detach().clone() for p in model["G"].parameters()]
    logs = plain_step(progan, model, {"x": torch.rand(4, 3, 16, 16) * 2 - 1}, opts)
    assert logs["resolution"] == 16 and all(math.isfinite(v) for v in logs.values())
    active = model["G"].active_parameters(2, 1.0)  # all but the coarser levels' toRGB layers
    changed = [not torch.equal(a, b) for a, b in zip(g0, model["G"].parameters())]
    assert changed == [id(p) in active for p in model["G"].parameters()] and sum(changed) > 10


def test_resume_in_the_middle_of_a_fade_in_is_exact(tmp_path):
    """phase_steps=2 on 8x8 digits: steps 2, 3 fade in 8x8 (alpha 0, 0.5); stop after step 3 and resume."""
    args = ["--data", "digits", "model.channels=8", "model.min_channels=8", "model.latent_dim=8",
            "model.phase_steps=2", "model.mbstd_group=2", *FAST_TRAIN, "train.ema_decay=0.9", "train.ckpt_every=3"]
    assert run_cli("train", "progan", *args, "train.steps=6", "--out", tmp_path / "full") == 0
    assert run_cli("train", "progan", *args, "train.steps=3", "--out", tmp_path / "part") == 0
    logs = [json.loads(r) for r in (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["resolution"], r["alpha"]) for r in logs] == [(4, 1.0), (4, 1.0), (8, 0.0)]
    assert run_cli("train", "progan", *args, "train.steps=6", "--out", tmp_path / "part", "--resume") == 0
    a, b = latest_checkpoint(tmp_path / "full" / "checkpoints"), latest_checkpoint(tmp_path / "part" / "checkpoints")
    assert a.step == b.step == 6
    for k, v in a.tensors.items():
        if not k.startswith("rng/"):
            assert torch.equal(v, b.tensors[k]), k
    logs = [json.loads(r) for r in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["resolution"], r["alpha"]) for r in logs][3] == (8, 0.5)


# ---------------------------------------------------------------------------------------------- bad input


def test_bad_input_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="power of two"):
        build(shape=(3, 12, 12))
    with pytest.raises(ValueError, match="square"):
        build(shape=(3, 16, 8))
    with pytest.raises(ValueError, match="phase_steps"):
        build(phase_steps=0)
    model, cfg = build(mbstd_group=4)
    with pytest.raises(ValueError, match="minibatch-stddev"):
        plain_step(progan, model, {"x": torch.rand(6, 3, 16, 16)}, progan.make_optimizers(model, cfg))
    with pytest.raises(ValueError, match="unknown sampler"):
        progan.sample(model, 2, sampler="ddim")
    assert run_cli("train", "progan", "--data", "ring8", "train.steps=1", "--out", tmp_path / "r") != 0
