"""DD-GAN family: the small-T schedule, the posterior q(x_{t-1} | x_t, x_0) against its closed form and against
samples of the forward process, shapes, training and sampling, bad input."""

import pytest
import torch
from conftest import FAST_TRAIN, plain_step, run_cli, spec_for

from genlab.models import ddgan

TINY = dict(mlp_hidden=16, mlp_layers=1, latent_dim=4, base_channels=8, channel_mult=[1, 2], attn_resolutions=[4],
            d_channels=8)


@pytest.mark.parametrize("T", [1, 2, 4, 8])
def test_schedule_spans_data_to_noise_for_every_T(T):
    ab = ddgan.alpha_bars(T)
    assert ab.shape == (T + 1,) and ab.dtype == torch.float64
    assert ab[0] == 1 and (ab[1:] < ab[:-1]).all()
    # the last step is (almost) pure noise whatever T: the VP SDE at t = 1, exp(-beta_min - (beta_max - beta_min)/2)
    assert torch.isclose(ab[T], torch.tensor(torch.e ** (-0.1 - 9.95), dtype=torch.float64))
    if T == 2:  # t = 1/2: exp(-0.05 - 19.9/8)
        assert torch.isclose(ab[1], torch.exp(torch.tensor(-0.05 - 19.9 / 8, dtype=torch.float64)))


@pytest.mark.parametrize("T", [1, 2, 4, 8])
def test_posterior_matches_the_gaussian_closed_form(T):
    """q(x_{t-1} | x_t, x_0) is proportional to q(x_t | x_{t-1}) q(x_{t-1} | x_0): precision-weighted Gaussians."""
    ab = ddgan.alpha_bars(T)
    x0 = torch.randn(T, 3, dtype=torch.float64)
    x_t = torch.randn(T, 3, dtype=torch.float64)
    t = torch.arange(1, T + 1)
    mean, var = ddgan.posterior(x0, x_t, t, ab)
    assert mean.shape == (T, 3) and var.shape == (T, 1)
    ab_t, ab_prev = ab[t][:, None], ab[t - 1][:, None]
    alpha = ab_t / ab_prev
    beta = 1 - alpha
    if T > 1:  # t = 1 has a zero-variance prior q(x_0 | x_0); checked separately below
        k = slice(1, None)
        prec = 1 / (1 - ab_prev[k]) + alpha[k] / beta[k]
        mu = (ab_prev[k].sqrt() * x0[k] / (1 - ab_prev[k]) + alpha[k].sqrt() * x_t[k] / beta[k]) / prec
        assert torch.allclose(var[k], 1 / prec, rtol=1e-10)
        assert torch.allclose(mean[k], mu, rtol=1e-9, atol=1e-12)
    # at t = 1 the posterior is the point x_0: sampling it returns the generator's x_0' itself
    assert var[0].item() == 0 and torch.allclose(mean[0], x0[0])
    assert torch.equal(ddgan.sample_posterior(x0[:1], x_t[:1], t[:1], ab, torch.randn(1, 3, dtype=torch.float64)), mean[:1])


def test_posterior_matches_samples_of_the_forward_process():
    """Regressing x_{t-1} on x_t over forward-process pairs (fixed x_0) recovers the posterior's mean and variance."""
    T, t, n = 4, 3, 200_000
    ab = ddgan.alpha_bars(T)
    g = torch.Generator().manual_seed(0)
    x0 = torch.full((n, 1), 0.7, dtype=torch.float64)
    tt = torch.full((n,), t)
    x_prev, x_t = ddgan.diffuse_pair(x0, tt, torch.randn(n, 1, generator=g, dtype=torch.float64),
                                     torch.randn(n, 1, generator=g, dtype=torch.float64), ab)
    # marginals of the forward process
    assert abs(x_prev.var().item() - (1 - ab[t - 1]).item()) < 0.01
    assert abs(x_t.mean().item() - 0.7 * ab[t].sqrt().item()) < 0.01
    # E[x_{t-1} | x_t] = a x_t + b and Var = residual variance: compare to the closed form at x_t = 0 and 1
    A = torch.cat([x_t, torch.ones_like(x_t)], 1)
    coef = torch.linalg.lstsq(A, x_prev).solution.squeeze(1)  # (slope, intercept)
    resid = (x_prev - A @ coef[:, None]).var().item()
    m0, var = ddgan.posterior(x0[:1], torch.zeros(1, 1, dtype=torch.float64), tt[:1], ab)
    m1, _ = ddgan.posterior(x0[:1], torch.ones(1, 1, dtype=torch.float64), tt[:1], ab)
    assert abs(coef[1].item() - m0.item()) < 0.01 and abs(coef[0].item() - (m1 - m0).item()) < 0.01
    assert abs(resid / var.item() - 1) < 0.02


@pytest.mark.parametrize("shape,classes", [([2], 0), ([1, 8, 8], 0), ([1, 8, 8], 3), ([2], 3)])
@pytest.mark.parametrize("T", [1, 2])
def test_train_step_and_sample_shapes(shape, classes, T):
    cfg = ddgan.Config(num_steps=T, class_cond=classes > 0, r1_gamma=0.02, **TINY)
    torch.manual_seed(0)
    model = ddgan.build(cfg, spec_for(shape, 3), {})
    assert ddgan.needs(cfg) == (("x", "y") if classes else ("x",))
    opts = ddgan.make_optimizers(model, cfg)
    batch = {"x": torch.rand(4, *shape) * 2 - 1, "y": torch.randint(0, 3, (4,))}
    g0 = [p.detach().clone() for p in model["G"].parameters()]
    d0 = [p.detach().clone() for p in model["D"].parameters()]
    logs = plain_step(ddgan, model, batch, opts)
    assert {"loss", "loss_d", "loss_g", "r1", "d_acc_real", "d_acc_fake"} <= set(logs)
    assert all(torch.isfinite(torch.tensor(v)) for v in logs.values())
    # both networks moved; G's gradient reached it through the posterior sample and D
    assert any(not torch.equal(a, b) for a, b in zip(g0, model["G"].parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(d0, model["D"].parameters()))
    y = torch.tensor([0, 1, 2, 1, 0]) if classes else None
    s = ddgan.sample(model, 5, cond={"y": y} if classes else None, generator=torch.Generator().manual_seed(1))
    assert s.shape == (5, *shape) and torch.isfinite(s).all()
    if len(shape) == 3:
        assert s.min() >= -1 and s.max() <= 1
    # per-image noise streams: the batch size does not change the samples
    again = ddgan.sample(model, 5, cond={"y": y} if classes else None, generator=torch.Generator().manual_seed(1),
                         batch_size=2)
    assert torch.allclose(s, again, atol=1e-6)


def test_one_step_model_is_a_gan_on_pure_noise():
    """T = 1: sampling is x_0 = G(x_1, z, 1), one network call, no posterior noise."""
    cfg = ddgan.Config(num_steps=1, **TINY)
    model = ddgan.build(cfg, spec_for([2]), {})
    calls = []
    model["G"].register_forward_hook(lambda m, i, o: calls.append(i[2].tolist()))
    ddgan.sample(model, 3, generator=torch.Generator().manual_seed(0))
    assert calls == [[1, 1, 1]]
    model = ddgan.build(ddgan.Config(num_steps=4, **TINY), spec_for([2]), {})
    calls = []
    model["G"].register_forward_hook(lambda m, i, o: calls.append(i[2][0].item()))
    ddgan.sample(model, 3, generator=torch.Generator().manual_seed(0))
    assert calls == [4, 3, 2, 1]


def test_bad_input_is_named():
    with pytest.raises(ValueError, match=r"T in \{1, 2, 4, 8\}"):
        ddgan.build(ddgan.Config(num_steps=3, **TINY), spec_for([2]), {})
    model = ddgan.build(ddgan.Config(num_steps=2, **TINY), spec_for([2]), {})
    with pytest.raises(ValueError, match="trained with model.num_steps=2"):
        ddgan.sample(model, 2, steps=4)
    with pytest.raises(ValueError, match="unknown sampler"):
        ddgan.sample(model, 2, sampler="ddim")
    with pytest.raises(ValueError, match="divisible by 4"):
        ddgan.build(ddgan.Config(**TINY), spec_for([1, 6, 6]), {})
    with pytest.raises(ValueError, match="without class conditioning"):
        ddgan.sample(model, 2, cond={"y": torch.tensor([0, 1])})


def test_cli_refuses_unsupported_steps(tmp_path, capsys):
    args = ["train", "ddgan", "--data", "ring8", "model.mlp_hidden=8", *FAST_TRAIN, "train.steps=1"]
    assert run_cli(*args, "model.num_steps=3", "--out", tmp_path / "a") == 2
    assert "model.num_steps" in capsys.readouterr().err
    assert run_cli(*args, "model.num_steps=8", "--out", tmp_path / "b") == 0
    assert run_cli("sample", tmp_path / "b", "--n", "4", "--steps", "2", "--out", tmp_path / "s.png") == 2
    assert "trained with model.num_steps=8" in capsys.readouterr().err
