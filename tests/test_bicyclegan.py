"""BicycleGAN (genlab/models/bicyclegan.py): latent maths, encoder shapes, z changes outputs, the variants'
networks and losses, the latent regression leaving E untouched, and bad input."""

import pytest
import torch
from conftest import plain_step

from genlab.data import DataSpec
from genlab.models import bicyclegan as bg

SPEC = DataSpec("edges2fmnist-color", (3, 32, 32), tuple(str(i) for i in range(10)), ("y", "x_src", "color"))


def tiny(**kw) -> bg.Config:
    return bg.Config(g_channels=8, e_channels=8, d_channels=8, **kw)


def batch(n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"x": torch.rand(n, 3, 32, 32, generator=g) * 2 - 1, "x_src": torch.rand(n, 1, 32, 32, generator=g) * 2 - 1}


def test_kl_is_zero_at_the_prior_positive_elsewhere_and_matches_the_closed_form():
    mu, logvar = torch.zeros(3, 8), torch.zeros(3, 8)
    assert torch.equal(bg.kl_standard_normal(mu, logvar), torch.zeros(3))
    g = torch.Generator().manual_seed(0)
    mu, logvar = torch.randn(5, 8, generator=g), torch.randn(5, 8, generator=g)
    kl = bg.kl_standard_normal(mu, logvar)
    assert (kl > 0).all()
    q = torch.distributions.Normal(mu, (0.5 * logvar).exp())
    ref = torch.distributions.kl_divergence(q, torch.distributions.Normal(0.0, 1.0)).sum(1)
    assert torch.allclose(kl, ref, atol=1e-5)


def test_reparameterize_is_mu_plus_sigma_eps():
    mu, logvar, eps = torch.tensor([[1.0, -2.0]]), torch.log(torch.tensor([[4.0, 0.25]])), torch.tensor([[1.0, 2.0]])
    assert torch.allclose(bg.reparameterize(mu, logvar, eps), torch.tensor([[3.0, -1.0]]))


def test_encoder_gives_mu_and_logvar_of_latent_dim():
    model = bg.build(tiny(latent_dim=5), SPEC, {})
    mu, logvar = model["E"](batch()["x"])
    assert mu.shape == logvar.shape == (4, 5)


def test_different_z_give_different_outputs_and_a_seed_repeats_them():
    model = bg.build(tiny(), SPEC, {})
    a = batch(2)["x_src"]
    out = bg.translate(model, a, n_outputs=3, generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 3, 3, 32, 32) and out.abs().max() <= 1
    assert (out[:, 0] - out[:, 1]).abs().mean() > 1e-3  # z reaches G
    assert torch.equal(out, bg.translate(model, a, n_outputs=3, generator=torch.Generator().manual_seed(0)))
    assert not torch.equal(out, bg.translate(model, a, n_outputs=3, generator=torch.Generator().manual_seed(1)))


def test_frozen_mu_sends_gradient_to_the_input_but_not_to_the_encoder():
    """BicycleGAN's latent regression trains G only (the reference code's `backward_G_alone`)."""
    E = bg.build(tiny(), SPEC, {})["E"]
    x = batch()["x"].requires_grad_(True)
    bg.frozen_mu(E, x).square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in E.parameters())
    assert torch.allclose(bg.frozen_mu(E, x), E(x)[0])  # same values as E's forward


def _g_phase_grads(monkeypatch, variant):
    """(E's, G's) gradients at the G phase's optimizer step, with only the latent regression term left."""
    cfg = tiny(variant=variant, lambda_l1=0.0, lambda_kl=0.0)
    model = bg.build(cfg, SPEC, {})
    opts = bg.make_optimizers(model, cfg)
    monkeypatch.setattr(bg, "g_loss", lambda loss, d: d.sum() * 0.0)  # no GAN term
    seen = []
    monkeypatch.setattr(opts["G"], "step", lambda: seen.append(
        ([p.grad for p in model["E"].parameters()], [p.grad for p in model["G"].parameters()])))
    plain_step(bg, model, batch(), opts)
    return seen[0]


def test_bicyclegan_latent_regression_trains_g_but_not_e(monkeypatch):
    """E is held fixed for L1_latent in BicycleGAN (as the reference code); cLR-GAN alone trains both."""
    e_grads, g_grads = _g_phase_grads(monkeypatch, "bicyclegan")
    assert all(g is None or g.abs().sum() == 0 for g in e_grads)
    assert any(g is not None and g.abs().sum() > 0 for g in g_grads)
    e_grads, _ = _g_phase_grads(monkeypatch, "clr-gan")
    assert any(g is not None and g.abs().sum() > 0 for g in e_grads)


@pytest.mark.parametrize("variant,nets,keys", [
    ("bicyclegan", {"G", "E", "D", "D2"}, {"l1", "kl", "loss_z", "loss_d", "loss_d2"}),
    ("cvae-gan", {"G", "E", "D"}, {"l1", "kl", "loss_d"}),
    ("clr-gan", {"G", "E", "D"}, {"loss_z", "loss_d"}),
    ("pix2pix+noise", {"G", "D"}, {"l1", "loss_d"}),
])  # fmt: skip
def test_variants_build_their_networks_and_train_their_losses(variant, nets, keys):
    cfg = tiny(variant=variant)
    model = bg.build(cfg, SPEC, {})
    assert set(model.keys()) == nets
    before = {k: p.detach().clone() for k, p in model.named_parameters()}
    logs = plain_step(bg, model, batch(), bg.make_optimizers(model, cfg))
    loss_keys = {k for k in logs if k in ("l1", "kl", "loss_z", "loss_d", "loss_d2")}
    assert loss_keys == keys and all(torch.isfinite(torch.tensor(v)) for v in logs.values())
    assert all(not torch.equal(before[k], p) for k, p in model.named_parameters() if k.endswith("weight"))


def test_one_discriminator_judges_both_cycles():
    cfg = tiny(two_discriminators=False)
    model = bg.build(cfg, SPEC, {})
    assert "D2" not in model
    logs = plain_step(bg, model, batch(), bg.make_optimizers(model, cfg))
    assert "loss_d" in logs and "loss_d2" not in logs


def test_conditional_d_sees_the_edge_map():
    model = bg.build(tiny(cond_d=True), SPEC, {})
    assert model["D"].net[0].in_channels == 4  # 3 output channels + 1 edge channel
    plain_step(bg, model, batch(), bg.make_optimizers(model, model.cfg))


def test_report_images_and_eval_conditions():
    model = bg.build(tiny(), SPEC, {})
    strip = bg.report_images(model, batch(4), torch.Generator().manual_seed(0))["translation"]
    assert strip.shape == (4, 6, 3, 32, 32)  # rows of input | 4 outputs | target

    class Test:  # a stand-in for the test Dataset
        def __len__(self):
            return 3

        def batch(self, idx):
            return {"x_src": idx.float()[:, None, None, None].expand(-1, 1, 32, 32), "y": idx}

    cond = bg.eval_conditions(Test(), 7)
    assert cond["x_src"].shape == (7, 1, 32, 32) and cond["y"].tolist() == [0, 1, 2, 0, 1, 2, 0]


def test_bad_input_is_a_clear_error():
    model = bg.build(tiny(), SPEC, {})
    with pytest.raises(ValueError, match="x_src"):
        bg.sample(model, 2)
    with pytest.raises(ValueError, match="shape"):
        bg.sample(model, 2, cond={"x_src": torch.zeros(2, 3, 32, 32)})  # RGB instead of an edge map
    with pytest.raises(ValueError, match="2 source images for 3"):
        bg.sample(model, 3, cond={"x_src": torch.zeros(2, 1, 32, 32)})
    with pytest.raises(ValueError, match="--to"):
        bg.translate(model, torch.zeros(1, 1, 32, 32), to="red")
    with pytest.raises(ValueError, match="n_outputs"):
        bg.translate(model, torch.zeros(1, 1, 32, 32), n_outputs=0)
    with pytest.raises(ValueError, match="points"):
        bg.build(tiny(), DataSpec("ring8", (2,)), {})
    with pytest.raises(ValueError, match="latent_dim"):
        bg.build(tiny(latent_dim=0), SPEC, {})


def test_translate_cli_end_to_end(tmp_path):
    """A tiny edges2fmnist-color run, then `genlab translate --n-outputs 3`: input | 3 outputs | target."""
    from conftest import FAST_TRAIN, run_cli

    from genlab.data.png import load_png

    run = tmp_path / "run"
    tiny_args = ["model.g_channels=4", "model.e_channels=4", "model.d_channels=4", "model.d_layers=1"]
    assert run_cli("train", "bicyclegan", "--data", "edges2fmnist-color", *tiny_args, *FAST_TRAIN, "train.steps=2",
                   "--out", run) == 0
    assert run_cli("translate", run, "--out", tmp_path / "t", "--n-outputs", "3", "--n", "2", "--seed", "1") == 0
    outs = [load_png(tmp_path / "t" / f"000000-out-{k}.png") for k in range(3)]
    assert outs[0].shape == (3, 32, 32) and not torch.equal(outs[0], outs[1])
    assert (tmp_path / "t" / "000001-target.png").exists() and (tmp_path / "t" / "grid.png").exists()
    assert run_cli("translate", run, "--out", tmp_path / "bad", "--to", "red") == 2  # no domains: usage error
