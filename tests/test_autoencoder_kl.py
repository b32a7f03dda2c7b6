"""autoencoder-kl: shapes per downsampling factor, the KL term, the perceptual network (parity with the bundled
evaluator it is read from), the delayed discriminator, bad input."""

import pytest
import torch
from conftest import spec_for

from genlab.models import autoencoder_kl as A
from genlab.rng import SampleRNG
from genlab.training.context import StepContext


def _model(shape=(3, 16, 16), **cfg):
    cfg = A.Config(**{"channels": 8, "disc_channels": 8, "perceptual": "none", **cfg})
    torch.manual_seed(0)
    return A.build(cfg, spec_for(shape), {})


@pytest.mark.parametrize("f", [1, 2, 4, 8])
@pytest.mark.parametrize("shape", [(3, 32, 32), (1, 28, 28)])
def test_latent_shape_is_the_image_over_f_and_decode_inverts_it(f, shape):
    m = _model(shape, downsample=f, latent_channels=3)
    x = torch.rand(2, *shape) * 2 - 1
    z = A.encode(m, x)
    side = -(-shape[1] // f)  # ceil: stride-2 convs round up (28 / 8 -> 4)
    assert z.shape == (2, 3, side, side) and list(z.shape[1:]) == m.latent_shape
    rec = A.decode(m, z)
    assert rec.shape == x.shape and rec.abs().max() <= 1


def test_encode_is_the_posterior_mean_and_encode_sample_draws_around_it():
    m = _model()
    x = torch.rand(3, 3, 16, 16) * 2 - 1
    assert torch.equal(A.encode(m, x), A.encode(m, x))
    mu, logvar = m["ae"].encoder(x)
    z = A.encode_sample(m, x, SampleRNG([1, 2, 3]))
    assert torch.allclose(A.encode(m, x), mu)
    assert torch.allclose(z, mu + (0.5 * logvar).exp() * SampleRNG([1, 2, 3]).randn(*mu.shape[1:]), atol=1e-6)


def test_kl_term_closed_form():
    mu, logvar = torch.zeros(2, 4, 2, 2), torch.zeros(2, 4, 2, 2)
    assert torch.equal(A.kl_per_pixel(mu, logvar, 64), torch.zeros(2))
    # KL(N(1, e^1) || N(0, 1)) per element = 0.5 (1 + e - 1 - 1) = 0.5 (e - 1); 16 elements over 64 pixels
    kl = A.kl_per_pixel(mu + 1, logvar + 1, 64)
    assert torch.allclose(kl, torch.full((2,), 16 * 0.5 * (torch.e - 1) / 64))


def test_perceptual_features_match_the_bundled_evaluator():
    """The family rebuilds the evaluator's conv stages from its weights file: same outputs as genlab.metrics'."""
    from genlab.metrics.evaluators import load_evaluator

    for name in ("scenes-cell-net", "fmnist-color-net"):
        ours = A.DomainFeatures(A.EVALUATOR_WEIGHTS / f"{name}.safetensors")
        ref = load_evaluator(name).eval()
        x = torch.rand(4, 3, 32, 32) * 2 - 1
        with torch.no_grad():
            for a, b in zip(ours(x), ref.feature_maps(x), strict=True):
                assert torch.allclose(a, b, atol=1e-5)


def test_perceptual_distance_is_zero_for_equal_images_and_auto_avoids_the_protocol_evaluator():
    scenes = A.build(A.Config(channels=8), spec_for((3, 32, 32), name="scenes"), {})
    other = A.build(A.Config(channels=8), spec_for((1, 28, 28), name="fashion-mnist"), {})
    assert A.perceptual_path(scenes.cfg, scenes.spec).stem == "fmnist-color-net"  # scenes: scenes-clip / cell-net
    assert A.perceptual_path(other.cfg, other.spec).stem == "scenes-cell-net"
    x = torch.rand(2, 1, 28, 28) * 2 - 1
    assert torch.allclose(other.perceptual(x, x), torch.zeros(2))
    assert (other.perceptual(x, x.flip(-1)) > 0).all()
    assert torch.equal(_model().perceptual(x, x.flip(-1)), torch.zeros(2))  # perceptual=none


def test_perceptual_network_is_not_in_the_state_dict():
    m = A.build(A.Config(channels=8), spec_for((3, 32, 32), name="scenes"), {})
    assert m.perceptual_net is not None
    assert not any("perceptual" in k for k in m.state_dict())


def _step(m, x, step):
    opts = A.make_optimizers(m, m.cfg)
    ctx = StepContext(m, opts, {"x": x}, SampleRNG(range(len(x))), step=step)
    return A.train_step(m, {"x": x}, opts, ctx)


def test_discriminator_switches_on_at_disc_start():
    m = _model(disc_start=5)
    x = torch.rand(4, 3, 16, 16) * 2 - 1
    d0 = [p.clone() for p in m["D"].parameters()]
    logs = _step(m, x, step=4)
    assert "loss_d" not in logs and "loss_g" not in logs
    assert all(torch.equal(a, b) for a, b in zip(d0, m["D"].parameters()))
    logs = _step(m, x, step=5)
    assert "loss_d" in logs and "loss_g" in logs
    assert not all(torch.equal(a, b) for a, b in zip(d0, m["D"].parameters()))


def test_training_reduces_the_reconstruction_error():
    m = _model(perceptual_weight=0.0, adv_weight=0.0, lr=2e-3)
    x = torch.rand(8, 3, 16, 16).round() * 2 - 1
    first = _step(m, x, 0)["l1"]
    for s in range(1, 30):
        last = _step(m, x, s)["l1"]
    assert last < 0.7 * first


@pytest.mark.parametrize("bad, msg", [({"downsample": 3}, "downsample"), ({"latent_channels": 0}, ">= 1"),
                                      ({"perceptual": "no-such-net"}, "model.perceptual=no-such-net")])
def test_bad_config_is_a_clear_error(bad, msg):
    with pytest.raises(ValueError, match=msg):
        A.build(A.Config(**{"channels": 8, **bad}), spec_for((3, 16, 16)), {})


def test_points_and_sampling_are_clear_errors():
    with pytest.raises(ValueError, match="needs images"):
        A.build(A.Config(), spec_for((2,)), {})
    with pytest.raises(ValueError, match="without a prior"):
        A.sample(_model(), 4)
