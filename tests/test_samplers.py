import math

import pytest
import torch

from genlab.rng import SampleRNG
from genlab.samplers import ddim_timesteps, make_alpha_bar, predict_eps_x0, q_sample, sample_ddim, sample_ddpm
from genlab.samplers.diffusion import v_target


def test_linear_schedule_matches_ho_et_al():
    ab = make_alpha_bar("linear", 1000)
    betas = 1 - ab / torch.cat([torch.ones(1, dtype=ab.dtype), ab[:-1]])
    assert betas[0].item() == pytest.approx(1e-4) and betas[-1].item() == pytest.approx(0.02)
    assert ab[-1].item() == pytest.approx(4.04e-5, rel=0.02)  # nearly pure noise at T


def test_cosine_schedule_properties():
    ab = make_alpha_bar("cosine", 1000)
    assert (ab[1:] < ab[:-1]).all() and 0.99 < ab[0] < 1 and ab[-1] < 1e-3
    # alpha_bar(t) = f(t)/f(0) with f = cos^2(((t+1)/T + s)/(1+s) * pi/2)
    t, s = 499, 0.008
    f = lambda u: math.cos((u + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    assert ab[t].item() == pytest.approx(f((t + 1) / 1000) / f(0), rel=1e-6)


def test_unknown_schedule_lists_choices():
    with pytest.raises(ValueError, match="unknown schedule 'cosin'; expected one of: linear, cosine"):
        make_alpha_bar("cosin", 10)


def test_v_and_eps_conversions_agree():
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g)
    ab = make_alpha_bar("cosine", 100)
    t = torch.tensor([0, 10, 50, 90, 99])
    x_t = q_sample(x0, t, eps, ab)
    for pred, out in (("eps", eps), ("v", v_target(x0, eps, ab[t]))):
        e, x = predict_eps_x0(out, x_t, ab[t], pred)
        assert torch.allclose(e, eps, atol=1e-4) and torch.allclose(x, x0, atol=1e-3)


def gaussian_eps(mu: float, sigma: float, ab: torch.Tensor):
    """The exact E[eps | x_t] when x_0 ~ N(mu, sigma^2): x_t ~ N(sqrt(ab) mu, ab sigma^2 + 1 - ab)."""

    def f(x_t, t):
        a = ab[t].to(x_t.dtype).reshape(-1, *([1] * (x_t.dim() - 1)))
        return (1 - a).sqrt() * (x_t - a.sqrt() * mu) / (a * sigma**2 + 1 - a)

    return f


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("sampler", ["ddim", "ddim-eta1", "ddpm"])
def test_exact_eps_reproduces_gaussian_data(schedule, sampler):
    mu, sigma, n = 0.5, 0.3, 200
    ab = make_alpha_bar(schedule, 1000)
    rng = SampleRNG(range(n))
    x_T = rng.randn(40)  # 200 streams x 40 iid coordinates = 8,000 values
    # stochastic samplers need fine steps: their q(x_s | x_t, x0_hat) variance ignores x0's uncertainty, which
    # shrinks samples at coarse strides (Bao et al. 2022); deterministic DDIM is accurate with 100 steps
    steps = ddim_timesteps(1000, 100 if sampler == "ddim" else 1000)
    f = gaussian_eps(mu, sigma, ab)
    if sampler == "ddpm":
        x = sample_ddpm(f, x_T, ab, steps, rng=rng)
    else:
        x = sample_ddim(f, x_T, ab, steps, eta=1.0 if sampler == "ddim-eta1" else 0.0, rng=rng)
    # statistical tolerance: 8,000 values, se(mean) = 0.0034, se(std) = 0.0024
    assert x.mean().item() == pytest.approx(mu, abs=0.015)
    assert x.std().item() == pytest.approx(sigma, abs=0.015)


def test_ddim_eta0_is_deterministic_and_ignores_rng():
    ab = make_alpha_bar("linear", 1000)
    x_T = torch.randn(16, 2, generator=torch.Generator().manual_seed(1))
    f = gaussian_eps(0.0, 0.5, ab)
    steps = ddim_timesteps(1000, 20)
    a = sample_ddim(f, x_T, ab, steps)
    b = sample_ddim(f, x_T.clone(), ab, steps, rng=SampleRNG(range(16)))
    assert torch.equal(a, b)


def test_sampling_is_batch_size_independent():
    ab = make_alpha_bar("linear", 1000)
    f = gaussian_eps(0.0, 0.5, ab)
    steps = ddim_timesteps(1000, 10)
    whole = SampleRNG(range(8))
    full = sample_ddpm(f, whole.randn(3), ab, steps, rng=whole)
    parts = []
    chunked = SampleRNG(range(8))
    for lo in (0, 3):
        r = chunked.split(lo, {0: 3, 3: 8}[lo])
        parts.append(sample_ddpm(f, r.randn(3), ab, steps, rng=r))
    assert torch.allclose(full, torch.cat(parts), atol=1e-6)


def test_ddim_timesteps():
    s = ddim_timesteps(1000, 50)
    assert s[0] == 999 and s[-1] == 0 and len(s) == 50 and (s[1:] < s[:-1]).all()
    with pytest.raises(ValueError):
        ddim_timesteps(10, 11)


def test_ddim_eta1_equals_ddpm_posterior_sampling():
    """With eta = 1, DDIM's sigma_t is DDPM's posterior std (Song et al. 2021, Sec. 4.1): same noise, same path."""
    ab = make_alpha_bar("cosine", 1000)
    f = gaussian_eps(0.2, 0.4, ab)
    steps = ddim_timesteps(1000, 25)
    r1, r2 = SampleRNG(range(6)), SampleRNG(range(6))
    a = sample_ddim(f, r1.randn(3), ab, steps, eta=1.0, rng=r1)
    b = sample_ddpm(f, r2.randn(3), ab, steps, rng=r2)
    assert torch.allclose(a, b, atol=1e-5)
