"""GAN family: loss signs and gradients, packing, penalties, conditional sampling, DDP with G and D prepared."""

import typing

import pytest
import torch
from conftest import FAST_TRAIN, plain_step, run_cli, spec_for

from genlab.config import build_run_config
from genlab.errors import UsageError
from genlab.models import gan
from genlab.training.checkpoint import latest_checkpoint

TINY = dict(mlp_hidden=16, mlp_layers=2, channels=8, latent_dim=4)
LOSSES = typing.get_args(typing.get_type_hints(gan.Config)["loss"])


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("shape,cond", [([2], None), ([1, 8, 8], None), ([1, 8, 8], "projection"), ([2], "concat"),
                                        ([3, 8, 8], "concat")])
def test_smoke_every_loss(loss, shape, cond):
    cfg = gan.Config(loss=loss, class_cond=cond is not None, cond_d=cond or "projection",
                     pack=2, r1_gamma=1.0 if loss == "nonsaturating" else 0.0, **TINY)
    torch.manual_seed(0)
    spec = spec_for(shape, 3)  # labelled data; only a class_cond GAN uses the labels
    model = gan.build(cfg, spec, {})
    assert model.data_shape == shape and model.spec == spec and model.num_classes == (3 if cond else 0)
    assert gan.needs(cfg) == (("x", "y") if cond else ("x",))
    opts = gan.make_optimizers(model, cfg)
    x = torch.rand(6, *shape) * 2 - 1
    batch = {"x": x, "y": torch.randint(0, 3, (6,))}
    g0 = [p.detach().clone() for p in model["G"].parameters()]
    logs = plain_step(gan, model, batch, opts)
    assert all(torch.isfinite(torch.tensor(v)) for v in logs.values())
    assert any(not torch.equal(a, b) for a, b in zip(g0, model["G"].parameters()))
    s = gan.sample(model, 4, cond={"y": torch.tensor([0, 1, 2, 1])} if cond else None, generator=torch.Generator().manual_seed(0))
    assert s.shape == (4, *shape)
    if len(shape) == 3:
        assert s.min() >= -1 and s.max() <= 1


def test_d_losses_reward_telling_real_from_fake():
    good = (torch.tensor([3.0]), torch.tensor([-3.0]))  # D right
    bad = (torch.tensor([-3.0]), torch.tensor([3.0]))  # D wrong
    for loss in LOSSES:
        assert gan.d_loss(loss, *good) < gan.d_loss(loss, *bad), loss
        # G wants D to call its fakes real: a higher D logit on fakes lowers G's loss
        assert gan.g_loss(loss, torch.tensor([3.0])) < gan.g_loss(loss, torch.tensor([-3.0])), loss


def test_nonsaturating_gradient_survives_where_minimax_vanishes():
    """Early in training D rejects fakes confidently (d_f << 0): log(1 - D) has almost no gradient there."""
    d_fake = torch.tensor([-10.0], requires_grad=True)
    (g_mm,) = torch.autograd.grad(gan.g_loss("minimax", d_fake), d_fake)
    (g_ns,) = torch.autograd.grad(gan.g_loss("nonsaturating", d_fake), d_fake)
    assert abs(g_mm.item()) < 1e-4 and abs(g_ns.item()) > 0.99
    assert g_mm.item() < 0 and g_ns.item() < 0  # both push d_fake up (descent direction is +)


def test_packing_shapes():
    x = torch.arange(24.0).reshape(6, 1, 2, 2)
    p = gan.pack(x, 3)
    assert p.shape == (2, 3, 2, 2) and torch.equal(p[0, 1], x[1, 0]) and torch.equal(p[1, 0], x[3, 0])
    assert gan.pack(torch.zeros(8, 2), 4).shape == (2, 8)
    with pytest.raises(ValueError, match="not divisible by model.pack=4"):
        gan.pack(torch.zeros(6, 2), 4)
    cfg = gan.Config(pack=4, **TINY)
    assert gan.build(cfg, spec_for([2]), {})["D"](torch.zeros(8, 2)).shape == (2,)


def test_wgan_gp_penalty_is_zero_for_a_1_lipschitz_linear_critic():
    w = torch.randn(2 * 3 * 3)
    w = w / w.norm()
    critic = lambda x, y: x.flatten(1) @ w  # noqa: E731  gradient norm 1 everywhere
    real, fake = torch.randn(5, 2, 3, 3), torch.randn(5, 2, 3, 3)
    gp = gan.gradient_penalty(critic, real, fake, None, torch.rand(5, 1, 1, 1))
    assert gp.item() == pytest.approx(0.0, abs=1e-10)
    steep = lambda x, y: 3 * critic(x, y)  # noqa: E731  gradient norm 3: penalty (3 - 1)^2 = 4
    assert gan.gradient_penalty(steep, real, fake, None, torch.rand(5, 1, 1, 1)).item() == pytest.approx(4.0)


def test_conditional_sampling_returns_requested_classes_shape():
    cfg = gan.Config(class_cond=True, **TINY)
    model = gan.build(cfg, spec_for([1, 8, 8], 10), {}).eval()
    assert model.num_classes == 10
    assert gan.sample(model, 5, cond=7).shape == (5, 1, 8, 8)
    assert gan.sample(model, 5, cond={"y": torch.tensor(7)}).shape == (5, 1, 8, 8)
    g = torch.Generator
    assert torch.equal(gan.sample(model, 3, cond={"y": torch.tensor([1, 2, 3])}, generator=g().manual_seed(0)),
                       gan.sample(model, 3, cond=torch.tensor([1, 2, 3]), generator=g().manual_seed(0)))
    with pytest.raises(ValueError, match="labels in 0..9"):
        gan.sample(model, 2, cond=torch.tensor([3, 12]))
    with pytest.raises(ValueError, match="labels in 0..9"):
        gan.sample(model, 2, cond={"y": torch.tensor([3, 12])})
    with pytest.raises(ValueError, match="without class conditioning"):
        gan.sample(gan.build(gan.Config(**TINY), spec_for([1, 8, 8], 10), {}), 2, cond={"y": torch.tensor([1, 2])})


def test_unknown_choices_are_config_errors():
    with pytest.raises(UsageError, match="'model.loss' expects one of: minimax, nonsaturating, hinge, lsgan, wgan-gp; got 'wgan'"):
        build_run_config("gan", gan.Config, {"model": {"loss": "wgan"}})
    with pytest.raises(UsageError, match="'model.cond_d' expects one of: projection, concat; got 'add'"):
        build_run_config("gan", gan.Config, {"model": {"cond_d": "add"}})


def test_cgan_cli_end_to_end(tmp_path):
    out = tmp_path / "cgan"
    assert run_cli("train", "gan", "--data", "digits", "model.class_cond=true", "model.channels=8", *FAST_TRAIN,
                   "train.steps=2", "--out", out) == 0
    assert run_cli("sample", out, "--class", "7", "--n", "4", "--out", tmp_path / "sevens.png") == 0
    assert (tmp_path / "sevens.png").exists()
    # the EMA averages G only (gan.EMA_MODULES): its checkpoint entries are G's, and all of them
    assert gan.EMA_MODULES == ("G",)
    t = latest_checkpoint(out / "checkpoints")
    assert t.meta["has_ema"]
    ema, model = t.part("ema"), t.part("model")
    assert ema and set(ema) == {k for k in model if k.startswith("G.")}
