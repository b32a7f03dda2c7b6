"""GAN family: loss signs and gradients, packing, penalties, conditional sampling, DDP with G and D prepared."""


import pytest
import torch
from conftest import FAST_TRAIN, PlainCtx, run_cli, run_torchrun

from genlab.models import gan
from genlab.training.checkpoint import latest_checkpoint

TINY = dict(mlp_hidden=16, mlp_layers=2, channels=8, latent_dim=4)


@pytest.mark.parametrize("loss", gan.LOSSES)
@pytest.mark.parametrize("shape,cond", [([2], None), ([1, 8, 8], None), ([1, 8, 8], "projection"), ([2], "concat"),
                                        ([3, 8, 8], "concat")])
def test_smoke_every_loss(loss, shape, cond):
    cfg = gan.Config(data_shape=shape, loss=loss, class_cond=cond is not None, cond_d=cond or "projection",
                     num_classes=3, pack=2, r1_gamma=1.0 if loss == "nonsaturating" else 0.0, **TINY)
    torch.manual_seed(0)
    model = gan.build(cfg)
    opts = gan.make_optimizers(model, cfg)
    x = torch.rand(6, *shape) * 2 - 1
    y = torch.randint(0, 3, (6,)) if cond else None
    g0 = [p.detach().clone() for p in model["G"].parameters()]
    logs = gan.train_step(model, (x, y), opts, PlainCtx(6))
    assert all(torch.isfinite(torch.tensor(v)) for v in logs.values())
    assert any(not torch.equal(a, b) for a, b in zip(g0, model["G"].parameters()))
    s = gan.sample(model, 4, cond=torch.tensor([0, 1, 2, 1]) if cond else None, generator=torch.Generator().manual_seed(0))
    assert s.shape == (4, *shape)
    if len(shape) == 3:
        assert s.min() >= -1 and s.max() <= 1


def test_d_losses_reward_telling_real_from_fake():
    good = (torch.tensor([3.0]), torch.tensor([-3.0]))  # D right
    bad = (torch.tensor([-3.0]), torch.tensor([3.0]))  # D wrong
    for loss in gan.LOSSES:
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
    cfg = gan.Config(data_shape=[2], pack=4, **TINY)
    assert gan.build(cfg)["D"](torch.zeros(8, 2)).shape == (2,)


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
    cfg = gan.Config(data_shape=[1, 8, 8], class_cond=True, num_classes=10, **TINY)
    model = gan.build(cfg).eval()
    assert gan.sample(model, 5, cond=7).shape == (5, 1, 8, 8)
    with pytest.raises(ValueError, match="labels in 0..9"):
        gan.sample(model, 2, cond=torch.tensor([3, 12]))


def test_cgan_cli_end_to_end(tmp_path):
    out = tmp_path / "cgan"
    assert run_cli("train", "gan", "--data", "digits", "model.class_cond=true", "model.channels=8", *FAST_TRAIN,
                   "train.steps=2", "--out", out) == 0
    assert run_cli("sample", out, "--class", "7", "--n", "4", "--out", tmp_path / "sevens.png") == 0
    assert (tmp_path / "sevens.png").exists()


def test_two_processes_match_one_process_with_g_and_d_prepared(tmp_path):
    common = ["gan", "--data", "ring8", "model.mlp_hidden=16", "model.mlp_layers=2", "model.latent_dim=4",
              *FAST_TRAIN, "train.steps=3", "train.ema_decay=0", "model.pack=2"]
    run_torchrun(tmp_path / "two", *common, "train.batch_size=4", port=29519)
    assert run_cli("train", *common, "train.batch_size=8", "--out", tmp_path / "one") == 0
    t1 = latest_checkpoint(tmp_path / "one" / "checkpoints").tensors
    t2 = latest_checkpoint(tmp_path / "two" / "checkpoints").tensors
    keys = [k for k in t1 if k.startswith("model/")]
    assert any(k.startswith("model/G.") for k in keys) and any(k.startswith("model/D.") for k in keys)
    for k in keys:
        assert torch.allclose(t1[k], t2[k], atol=1e-5), k
