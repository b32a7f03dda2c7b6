import inspect
import json
import math
from pathlib import Path

import pytest
import torch

from genlab.rng import SampleRNG
from genlab.samplers import (
    SAMPLERS,
    VPDenoiser,
    classifier_free_guidance,
    ddim_timesteps,
    discrete_sigmas,
    karras_sigmas,
    make_alpha_bar,
    predict_eps_x0,
    q_sample,
    v_target,
    vp_sigmas,
)

GOLDEN = Path(__file__).parent / "data" / "sampler_golden.safetensors"


# --- schedules and conversions -------------------------------------------------------------------------------------


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


def test_ddim_timesteps():
    s = ddim_timesteps(1000, 50)
    assert s[0] == 999 and s[-1] == 0 and len(s) == 50 and (s[1:] < s[:-1]).all()
    with pytest.raises(ValueError):
        ddim_timesteps(10, 11)


def test_discrete_sigmas_are_the_table_at_ddim_timesteps_then_zero():
    ab = make_alpha_bar("linear", 1000)
    sig = discrete_sigmas(ab, 10)
    assert sig.shape == (11,) and sig.dtype == torch.float64 and sig[-1] == 0
    assert torch.equal(sig[:-1], vp_sigmas(ab)[ddim_timesteps(1000, 10)])
    # x_t / sqrt(alpha_bar) = x_0 + sigma eps  <=>  sigma^2 = (1 - alpha_bar) / alpha_bar
    assert torch.allclose(1 / (1 + sig[:-1] ** 2), ab[ddim_timesteps(1000, 10)], rtol=1e-12)


# --- VPDenoiser ----------------------------------------------------------------------------------------------------


def test_sigma_to_t_exact_on_table_and_log_interpolated_between():
    D = VPDenoiser(lambda x, t: x, make_alpha_bar("cosine", 1000))
    t = D.sigma_to_t(D.sigmas[[0, 17, 999]])
    assert t.dtype == torch.int64 and t.tolist() == [0, 17, 999]
    mid = (D.log_sigmas[10] + D.log_sigmas[11]).div(2).exp()  # halfway in log sigma between t = 10 and 11
    assert D.sigma_to_t(mid).item() == pytest.approx(10.5, abs=1e-4)
    assert D.t_to_sigma(torch.tensor(10.5)).item() == pytest.approx(mid.item(), rel=1e-12)
    assert torch.equal(D.t_to_sigma(torch.tensor([3, 999])), D.sigmas[[3, 999]])
    s = torch.tensor([0.05, 1.0, 30.0], dtype=torch.float64)
    assert torch.allclose(D.t_to_sigma(D.sigma_to_t(s).double()), s, rtol=1e-5)
    assert D.sigma_to_t(torch.tensor([0.0, 1e9])).tolist() == [0.0, 999.0]  # clamped to the table's range


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_vp_denoiser_feeds_x_t_and_recovers_x0(prediction):
    """The network sees x_t = sqrt(ab) x_0 + sqrt(1 - ab) eps (Ho et al. 2020, Eq. 4) and its true t; a perfect
    eps- or v-prediction gives back x_0."""
    ab = make_alpha_bar("cosine", 1000)
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(3, 2, 4, 4, generator=g), torch.randn(3, 2, 4, 4, generator=g)
    t = torch.tensor([5, 400, 990])
    seen = {}

    def net(x_t, t_in, **cond):
        seen.update(x_t=x_t, t=t_in, cond=cond)
        return eps if prediction == "eps" else v_target(x0, eps, ab[t]).float()

    D = VPDenoiser(net, ab, prediction)
    sigma = D.sigmas[t]
    denoised = D(x0 + sigma.float().reshape(-1, 1, 1, 1) * eps, sigma, {"y": torch.tensor([1, 2, 3])})
    assert torch.equal(seen["t"], t) and seen["cond"]["y"].tolist() == [1, 2, 3]
    assert torch.allclose(seen["x_t"], q_sample(x0, t, eps, ab), atol=1e-5)
    assert denoised.dtype == torch.float32 and torch.allclose(denoised, x0, atol=1e-3)


def test_vp_denoiser_scalar_sigma_clip_and_dtype():
    ab = make_alpha_bar("linear", 1000)
    D = VPDenoiser(lambda x, t: -3 * x, ab, clip_denoised=1.0)
    x = torch.randn(4, 1, 2, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    sigma = D.sigmas[500]
    assert torch.equal(D(x, sigma), D(x, sigma.expand(4)))
    assert D(x, sigma).dtype == torch.float64 and D(x, sigma).abs().max() == 1.0
    with pytest.raises(ValueError, match="unknown prediction 'x0'"):
        VPDenoiser(lambda x, t: x, ab, "x0")


# --- golden: the former VP-space samplers of genlab.models.ddpm ----------------------------------------------------


def load_golden():
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(GOLDEN), "pt") as f:
        meta = f.metadata()
    return meta, load_file(str(GOLDEN))


@pytest.fixture(scope="module")
def golden():
    from genlab.nn import UNet

    meta, tensors = load_golden()
    # the file predates the GroupNorm rule of >= 4 channels per group (genlab/nn/unet.py `_groups`): its U-Net
    # normalised with the largest group count dividing each width, which min_group_channels=1 reproduces
    net = UNet(**json.loads(meta["unet_args"]), min_group_channels=1)
    net.load_state_dict({k: v.float() for k, v in tensors.items() if "/" not in k})
    return meta, tensors, net.eval()


def test_golden_reproduces_former_ddpm_sample(golden):
    """Sigma-space samplers reproduce `ddpm.sample` as of the VP samplers (scripts/make_sampler_golden.py).

    Tolerance 1e-4 max abs (measured: <= 1.6e-6 for the eps-linear cases, 2.3e-6 for the stochastic v-cosine ones and
    4e-5 for v-cosine DDIM eta=0). That last gap is the old code's error, not the new one's: it converted v -> eps
    -> x_0 in float32, dividing by sqrt(alpha_bar_999) = 5e-5; against a float64 run of the old code the new
    samplers are within 3e-7 and the golden file within 4e-5.
    """
    meta, tensors, net = golden
    n, seed, clip = int(meta["n"]), int(meta["seed"]), float(meta["clip_x0"])
    args = json.loads(meta["unet_args"])
    shape = (args["in_channels"], args["image_size"], args["image_size"])
    for name, case in json.loads(meta["cases"]).items():
        ab = make_alpha_bar(case["schedule"], 1000)
        denoiser = VPDenoiser(net, ab, case["prediction"], clip_denoised=clip)
        sigmas = discrete_sigmas(ab, case["steps"])
        # as ddpm.sample: per-image streams seeded from one generator; x_T ~ N(0, I) first, then the sampler's noise
        rng = SampleRNG.from_generator(n, torch.Generator().manual_seed(seed))
        x = rng.randn(*shape) * math.sqrt(1 + sigmas[0].item() ** 2)
        opts = {"eta": case["eta"]} if case["sampler"] == "ddim" else {}
        with torch.no_grad():
            out = SAMPLERS[case["sampler"]](denoiser, x, sigmas, rng=rng, **opts)
        err = (out - tensors[f"final/{name}"]).abs().max().item()
        assert err <= 1e-4, f"{name}: max abs error {err:.2e}"
        assert torch.equal(tensors[f"final/{name}"].clamp(-1, 1), tensors[f"sample/{name}"])


# --- closed forms: 1-D Gaussian data --------------------------------------------------------------------------------


def gaussian_denoiser(m: float, s: float):
    """The exact E[x_0 | x] for x_0 ~ N(m, s^2), x = x_0 + sigma eps: (s^2 x + sigma^2 m) / (s^2 + sigma^2)."""

    def D(x, sigma, cond=None):
        sigma = torch.as_tensor(sigma, dtype=x.dtype).reshape(-1, *([1] * (x.dim() - 1)))
        return (s**2 * x + sigma**2 * m) / (s**2 + sigma**2)

    return D


def gaussian_eps_net(m: float, s: float, ab: torch.Tensor):
    """The exact E[eps | x_t] of the VP process for x_0 ~ N(m, s^2), as a network net(x_t, t).

    A fractional t means the noise level whose log sigma is interpolated between the neighbouring entries.
    """
    log_sigma = ((1 - ab) / ab).log() / 2

    def net(x_t, t):
        if t.is_floating_point():
            lo = t.double().floor().long().clamp(max=len(ab) - 2)
            w = t.double() - lo
            a = 1 / (1 + ((1 - w) * log_sigma[lo] + w * log_sigma[lo + 1]).mul(2).exp())
        else:
            a = ab[t]
        a = a.to(x_t.dtype).reshape(-1, *([1] * (x_t.dim() - 1)))
        return (1 - a).sqrt() * (x_t - a.sqrt() * m) / (a * s**2 + 1 - a)

    return net


def geometric_sigmas(n: int, sigma_max: float = 80.0, sigma_min: float = 0.002) -> torch.Tensor:
    """n sigmas uniform in log sigma (uniform in lambda, the grid of Lu et al. 2022), then 0."""
    s = torch.linspace(math.log(sigma_max), math.log(sigma_min), n, dtype=torch.float64).exp()
    return torch.cat([s, torch.zeros(1, dtype=torch.float64)])


def ode_solution(x, sigmas, m, s):
    """Exact probability-flow ODE solution to sigmas[-2], then the samplers' final step to 0 (x = D).

    For Gaussian data dx/dsigma = (x - D) / sigma = sigma (x - m) / (s^2 + sigma^2), so (x - m) / sqrt(s^2 + sigma^2)
    is constant along a trajectory.
    """
    s0, s_min = sigmas[0].item(), sigmas[-2].item()
    x_min = m + (x - m) * math.sqrt(s**2 + s_min**2) / math.sqrt(s**2 + s0**2)
    return gaussian_denoiser(m, s)(x_min, s_min)


def test_ode_samplers_converge_to_exact_solution_and_second_order_beats_euler():
    m, s = 0.5, 0.3
    D = gaussian_denoiser(m, s)
    z = torch.randn(64, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    err = {}
    for n in (20, 40, 80):
        sigmas = geometric_sigmas(n)
        x = m + z * math.sqrt(s**2 + sigmas[0].item() ** 2)
        ref = ode_solution(x, sigmas, m, s)
        for name in ("euler", "heun", "dpmpp_2m"):
            err[name, n] = (SAMPLERS[name](D, x, sigmas) - ref).abs().max().item()
    # measured: euler 0.12 / 0.062 / 0.031, heun 0.043 / 0.0093 / 0.0022, dpmpp_2m 0.016 / 0.0043 / 0.0011
    for n in (20, 40, 80):
        assert err["heun", n] < err["euler", n] / 2 and err["dpmpp_2m", n] < err["euler", n] / 2
    assert 1.7 < err["euler", 40] / err["euler", 80] < 2.3  # first order: halving the step halves the error
    assert (
        err["heun", 40] / err["heun", 80] > 3.5 and err["dpmpp_2m", 40] / err["dpmpp_2m", 80] > 3.5
    )  # second order
    assert err["heun", 80] < 5e-3 and err["dpmpp_2m", 80] < 5e-3


def test_ddim_eta0_is_euler_and_eta1_is_ddpm():
    D = gaussian_denoiser(0.2, 0.4)
    sigmas = discrete_sigmas(make_alpha_bar("cosine", 1000), 25)
    x = SampleRNG(range(6)).randn(3) * math.sqrt(1 + sigmas[0].item() ** 2)
    assert torch.equal(SAMPLERS["ddim"](D, x, sigmas, eta=0.0), SAMPLERS["euler"](D, x, sigmas))
    a = SAMPLERS["ddim"](D, x, sigmas, eta=1.0, rng=SampleRNG(range(6)))
    b = SAMPLERS["ddpm"](D, x, sigmas, rng=SampleRNG(range(6)))
    assert torch.equal(a, b)


@pytest.mark.parametrize("eta", [1.0, 0.5])
def test_one_ancestral_step_matches_vp_formulas(eta):
    """One step sigma_t -> sigma_s against DDIM's Eq. 12 (Song et al. 2021) in VP form, and for eta = 1 against the
    DDPM posterior q(x_s | x_t, x_0) of Ho et al. 2020, Eq. 6-7 (respaced: beta = 1 - alpha_bar_t / alpha_bar_s)."""
    D = gaussian_denoiser(0.3, 0.5)
    sig_t, sig_s = 2.5, 0.8
    ab_t, ab_s = 1 / (1 + sig_t**2), 1 / (1 + sig_s**2)
    x = SampleRNG(range(5, 10)).randn(4).double() * sig_t
    out = SAMPLERS["ddim"](
        D, x, torch.tensor([sig_t, sig_s], dtype=torch.float64), eta=eta, rng=SampleRNG(range(5))
    )
    z = SampleRNG(range(5)).randn(4).double()  # the same draw
    x_t, x0 = x * math.sqrt(ab_t), D(x, sig_t)
    eps = (x_t - math.sqrt(ab_t) * x0) / math.sqrt(1 - ab_t)
    sigma = eta * math.sqrt((1 - ab_s) / (1 - ab_t) * (1 - ab_t / ab_s))  # Eq. 16
    x_s = math.sqrt(ab_s) * x0 + math.sqrt(1 - ab_s - sigma**2) * eps + sigma * z  # Eq. 12
    assert torch.allclose(out, x_s / math.sqrt(ab_s), atol=1e-12)
    if eta == 1.0:
        beta = 1 - ab_t / ab_s
        mean = math.sqrt(ab_s) * beta / (1 - ab_t) * x0 + math.sqrt(1 - beta) * (1 - ab_s) / (1 - ab_t) * x_t
        var = (1 - ab_s) / (1 - ab_t) * beta
        assert torch.allclose(out, (mean + math.sqrt(var) * z) / math.sqrt(ab_s), atol=1e-12)


@pytest.mark.parametrize(
    "name,schedule,grid,steps,opts",
    [
        ("ddpm", "linear", "discrete", 1000, {}),
        ("ddim", "cosine", "discrete", 1000, {"eta": 0.5}),
        ("ddim", "linear", "discrete", 100, {}),
        ("heun", "linear", "karras", 50, {}),
        ("dpmpp_2m", "linear", "karras", 50, {}),
    ],
)
def test_vp_eps_model_reproduces_gaussian_data(name, schedule, grid, steps, opts):
    """An exact VP eps-predictor, through VPDenoiser, from the VP prior x = randn * sqrt(1 + sigma_0^2).

    Stochastic samplers need fine steps: their q(x_s | x_t, x0_hat) ignores x0's uncertainty, which shrinks samples
    at coarse strides (Bao et al. 2022; measured std 0.2875 at 250 DDPM steps). Heun and DPM-Solver++ run on Karras
    et al.'s grid, whose sigmas fall between the table's (interpolated timesteps); on the uniform-t grid their
    large last steps overshoot (see sample_dpmpp_2m).
    """
    m, s, n = 0.5, 0.3, 100
    ab = make_alpha_bar(schedule, 1000)
    denoiser = VPDenoiser(gaussian_eps_net(m, s, ab), ab)
    if grid == "discrete":
        sigmas = discrete_sigmas(ab, steps)
    else:
        sigmas = karras_sigmas(denoiser.sigma_min, denoiser.sigma_max, steps)
    rng = SampleRNG(range(n))
    x = rng.randn(80) * math.sqrt(
        1 + sigmas[0].item() ** 2
    )  # 100 streams x 80 iid coordinates = 8,000 values
    out = SAMPLERS[name](denoiser, x, sigmas, rng=rng, **opts)
    # statistical tolerance: 8,000 values, se(mean) = 0.0034, se(std) = 0.0024
    assert out.mean().item() == pytest.approx(m, abs=0.015)
    assert out.std().item() == pytest.approx(s, abs=0.015)


def test_karras_sigmas():
    sig = karras_sigmas(0.01, 80.0, 5)
    assert sig.shape == (6,) and sig[0] == 80.0 and sig[-2] == 0.01 and sig[-1] == 0
    assert (sig[1:] < sig[:-1]).all()
    rho = 7
    assert sig[2].item() == pytest.approx(
        ((80 ** (1 / rho) + 0.01 ** (1 / rho)) / 2) ** rho, rel=1e-12
    )  # Eq. 5


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_batch_splitting_and_determinism(name):
    """Same images in one batch of 8 or in batches of 3 + 5; deterministic samplers ignore rng (and need none)."""
    D = gaussian_denoiser(0.0, 0.5)
    sigmas = discrete_sigmas(make_alpha_bar("linear", 1000), 10)
    opts = {"eta": 0.5} if name == "ddim" else {}
    x = SampleRNG(range(100, 108)).randn(3) * math.sqrt(1 + sigmas[0].item() ** 2)
    whole = SAMPLERS[name](D, x, sigmas, rng=SampleRNG(range(8)), **opts)
    chunked = SampleRNG(range(8))
    parts = [
        SAMPLERS[name](D, x[lo:hi], sigmas, rng=chunked.split(lo, hi), **opts) for lo, hi in ((0, 3), (3, 8))
    ]
    assert torch.allclose(whole, torch.cat(parts), atol=1e-6)
    if name in ("euler", "heun", "dpmpp_2m"):
        assert torch.equal(SAMPLERS[name](D, x, sigmas), whole)
        assert torch.equal(SAMPLERS[name](D, x, sigmas, rng=SampleRNG(range(50, 58))), whole)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_samplers_share_one_signature_and_pass_cond_and_callback(name):
    fn = SAMPLERS[name]
    params = list(inspect.signature(fn).parameters.values())
    assert [p.name for p in params[:3]] == ["denoiser", "x", "sigmas"]
    assert all(p.kind is p.POSITIONAL_OR_KEYWORD and p.default is p.empty for p in params[:3])
    assert [p.name for p in params[3:6]] == ["cond", "rng", "callback"]
    assert all(p.kind is p.KEYWORD_ONLY and p.default is None for p in params[3:6])
    assert all(p.kind is p.KEYWORD_ONLY and p.default is not p.empty for p in params[6:])  # options, e.g. eta

    conds, steps = [], []

    def D(x, sigma, cond=None):
        conds.append(cond)
        return x * 0 + cond["m"]

    sigmas = torch.tensor([10.0, 3.0, 1.0, 0.0], dtype=torch.float64)
    cond = {"m": torch.full((2, 1), 0.25)}
    x = torch.randn(2, 1, generator=torch.Generator().manual_seed(0)) * 10
    out = fn(D, x, sigmas, cond=cond, rng=SampleRNG(range(2)), callback=lambda *a: steps.append(a))
    assert conds and all(c is cond for c in conds)
    assert [(i, sig) for i, sig, _, _ in steps] == [(0, 3.0), (1, 1.0), (2, 0.0)]
    assert torch.equal(steps[-1][2], out) and torch.allclose(out, torch.full((2, 1), 0.25))


def test_stochastic_samplers_need_rng_and_schedules_are_checked():
    D = gaussian_denoiser(0.0, 1.0)
    x, sigmas = torch.zeros(2, 1), torch.tensor([2.0, 1.0, 0.0], dtype=torch.float64)
    with pytest.raises(ValueError, match="pass rng=SampleRNG"):
        SAMPLERS["ddpm"](D, x, sigmas)
    with pytest.raises(ValueError, match="pass rng=SampleRNG"):
        SAMPLERS["ddim"](D, x, sigmas, eta=0.3)
    with pytest.raises(ValueError, match="3 streams for a batch of 2"):
        SAMPLERS["ddpm"](D, x, sigmas, rng=SampleRNG(range(3)))
    with pytest.raises(ValueError, match="decrease strictly"):
        SAMPLERS["euler"](D, x, torch.tensor([1.0, 2.0, 0.0]))
    with pytest.raises(TypeError):
        SAMPLERS["euler"](D, x, sigmas, eta=0.5)  # an option it does not have is an error, not ignored


# --- classifier-free guidance ---------------------------------------------------------------------------------------


def toy_conditional_denoiser(calls):
    def D(x, sigma, cond=None):
        calls.append((x.shape[0], torch.as_tensor(sigma).shape, {k: v.clone() for k, v in cond.items()}))
        y = cond["y"].to(x.dtype).reshape(-1, *([1] * (x.dim() - 1)))
        sigma = torch.as_tensor(sigma, dtype=x.dtype).reshape(-1, *([1] * (x.dim() - 1)))
        return 0.5 * x + y / (1 + sigma)

    return D


def test_cfg_combines_both_branches_in_one_batched_call():
    calls = []
    D = toy_conditional_denoiser(calls)
    x = torch.randn(3, 2, generator=torch.Generator().manual_seed(0))
    cond, uncond, sigma = (
        {"y": torch.tensor([1, 2, 3])},
        {"y": torch.tensor([10])},
        torch.tensor([1.0, 2.0, 3.0]),
    )
    guided = classifier_free_guidance(D, 3.0, uncond)(x, sigma, cond)
    assert len(calls) == 1 and calls[0][0] == 6 and calls[0][1] == (6,)
    assert calls[0][2]["y"].tolist() == [1, 2, 3, 10, 10, 10]  # [cond; uncond], uncond's batch of 1 repeated
    d_c, d_u = D(x, sigma, cond), D(x, sigma, {"y": torch.full((3,), 10)})
    assert torch.allclose(guided, d_u + 3.0 * (d_c - d_u), atol=1e-6)


def test_cfg_scale_one_is_conditional_and_zero_unconditional_exactly():
    D = toy_conditional_denoiser([])
    x = torch.randn(3, 2, generator=torch.Generator().manual_seed(1))
    cond, uncond = {"y": torch.tensor([1, 2, 3])}, {"y": torch.full((3,), 10)}
    assert torch.equal(classifier_free_guidance(D, 1.0, uncond)(x, 0.7, cond), D(x, 0.7, cond))
    assert torch.equal(classifier_free_guidance(D, 0.0, uncond)(x, 0.7, cond), D(x, 0.7, uncond))
    with pytest.raises(ValueError, match="cond keys"):
        classifier_free_guidance(D, 2.0, {"c": torch.zeros(1)})(x, 0.7, cond)
    with pytest.raises(ValueError, match="needs a condition"):
        classifier_free_guidance(D, 2.0, uncond)(x, 0.7, None)


def test_cfg_wraps_vp_denoiser_for_any_sampler():
    """Guided sampling end to end: a class-conditional tiny U-Net, guidance scale 1 = the plain conditional model."""
    from genlab.nn import UNet

    torch.manual_seed(0)
    net = UNet(1, 8, 8, (1, 2), 1, (), 0.0, num_classes=3).eval()
    ab = make_alpha_bar("linear", 1000)
    D = VPDenoiser(net, ab, clip_denoised=1.0)
    sigmas = discrete_sigmas(ab, 3)
    x = SampleRNG(range(2)).randn(1, 8, 8) * math.sqrt(1 + sigmas[0].item() ** 2)
    cond, uncond = {"y": torch.tensor([0, 2])}, {"y": torch.tensor([3])}  # label 3 = "no label"
    for name in ("heun", "dpmpp_2m"):
        plain = SAMPLERS[name](D, x, sigmas, cond=cond)
        guided = SAMPLERS[name](classifier_free_guidance(D, 1.0, uncond), x, sigmas, cond=cond)
        assert torch.equal(plain, guided)
        assert SAMPLERS[name](classifier_free_guidance(D, 4.0, uncond), x, sigmas, cond=cond).shape == x.shape


def test_ddpm_family_samples_on_a_karras_grid():
    from conftest import spec_for

    from genlab.models import ddpm

    cfg = ddpm.Config(base_channels=8, channel_mult=[1, 2], num_res_blocks=1, attn_resolutions=[], sample_steps=4)
    torch.manual_seed(0)
    model = ddpm.build(cfg, spec_for([1, 8, 8]), {}).eval()
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.05)
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    a = ddpm.sample(model, 3, generator=g(), sampler="heun", sigmas="karras")
    b = ddpm.sample(model, 3, generator=g(), sampler="heun", sigmas="uniform")
    assert a.shape == (3, 1, 8, 8) and torch.isfinite(a).all() and not torch.allclose(a, b)
    assert torch.equal(a, ddpm.sample(model, 3, generator=g(), sampler="heun", sigmas="karras"))
    with pytest.raises(ValueError, match="unknown sigmas 'log'"):
        ddpm.sample(model, 1, sigmas="log")


def test_ddpm_classifier_free_guidance_training_and_sampling():
    """Label dropout in training (p_uncond) and the guided sampler: s = 1 conditional, s = 0 unconditional."""
    from conftest import plain_step, spec_for

    from genlab.models import ddpm

    cfg = ddpm.Config(base_channels=8, channel_mult=[1, 2], num_res_blocks=1, attn_resolutions=[], sample_steps=3,
                      class_cond=True, p_uncond=0.5)
    torch.manual_seed(0)
    model = ddpm.build(cfg, spec_for([1, 8, 8], num_classes=3), {})
    seen = []
    real_forward = model.forward
    model.forward = lambda x_t, t, y=None: (seen.append(y.clone()), real_forward(x_t, t, y))[1]
    batch = {"x": torch.rand(64, 1, 8, 8) * 2 - 1, "y": torch.randint(0, 3, (64,))}
    plain_step(ddpm, model, batch, ddpm.make_optimizers(model, cfg))
    dropped = (seen[0] == 3).float().mean().item()  # 3 = the "no label" index
    assert 0.3 < dropped < 0.7 and torch.equal(seen[0][seen[0] != 3], batch["y"][seen[0] != 3])
    model.forward = real_forward
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.05)
    model.eval()
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    y = {"y": torch.tensor([0, 1, 2])}
    cond = ddpm.sample(model, 3, cond=y, generator=g())
    assert torch.equal(ddpm.sample(model, 3, cond=y, generator=g(), guidance=1.0), cond)
    uncond = ddpm.sample(model, 3, generator=g())  # no labels: the network gets the "no label" index
    assert torch.allclose(ddpm.sample(model, 3, cond=y, generator=g(), guidance=0.0), uncond, atol=1e-6)
    strong = ddpm.sample(model, 3, cond=y, generator=g(), guidance=3.0)
    assert strong.shape == (3, 1, 8, 8) and strong.abs().max() <= 1
    # the guided denoiser: branches unclipped, mixed, then clipped (the one CFG wrapper of genlab.samplers)
    from genlab.samplers import VPDenoiser

    raw = VPDenoiser(model, ddpm.alpha_bar(cfg), cfg.prediction)
    x, sigma = torch.randn(3, 1, 8, 8) * 2, torch.full((3,), 2.0)
    d_c, d_u = raw(x, sigma, y), raw(x, sigma, {"y": torch.full((3,), 3)})
    expected = (d_u + 3.0 * (d_c - d_u)).clamp(-1, 1)
    assert torch.allclose(ddpm.denoiser(model, 3.0)(x, sigma, y), expected, atol=1e-5)
    with pytest.raises(ValueError, match="needs class labels"):
        ddpm.sample(model, 2, guidance=2.0)
    plain = ddpm.build(ddpm.Config(base_channels=8, channel_mult=[1, 2], num_res_blocks=1, attn_resolutions=[],
                                   class_cond=True), spec_for([1, 8, 8], num_classes=3), {})
    with pytest.raises(ValueError, match="without label dropout"):
        ddpm.sample(plain, 1, cond={"y": torch.tensor([0])}, guidance=2.0)
