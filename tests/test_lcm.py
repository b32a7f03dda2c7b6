"""Latent consistency models (lcm) and the shared consistency maths (genlab/samplers/consistency.py)."""

import math

import pytest
import torch

from genlab.rng import SampleRNG
from genlab.samplers import SAMPLERS, discrete_sigmas, make_alpha_bar
from genlab.samplers.consistency import c_skip_out, distance, ode_step, sample_consistency

# ------------------------------------------------------------------------------------------ shared maths


def test_c_skip_out_meets_the_boundary_exactly_and_tends_to_the_denoiser():
    sigma = torch.tensor([0.002, 0.01, 0.5, 80.0], dtype=torch.float64)
    c_skip, c_out = c_skip_out(sigma, 0.002, 0.5)
    assert c_skip[0].item() == 1.0 and c_out[0].item() == 0.0  # f(x, sigma_min) = x for any network
    assert c_skip[2].item() == pytest.approx(0.25 / (0.498**2 + 0.25))  # Song et al. 2023, App. C
    assert torch.allclose(c_skip + c_out, torch.ones(4, dtype=torch.float64))
    assert c_out[3].item() > 0.9999  # far from the boundary f is the denoiser


def test_ode_step_euler_is_the_ddim_step_of_the_shared_sampler():
    """One per-sample Euler step equals sample_ddim on a 2-level grid (the same ODE, the same numbers)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 2, 4, 4, generator=g)
    D = lambda x, s, c=None: 0.7 * x / (1 + torch.as_tensor(s, dtype=x.dtype).reshape(-1, 1, 1, 1) ** 2) ** 0.5  # noqa: E731
    s_hi, s_lo = 2.0, 0.5
    ours = ode_step(D, x, torch.full((3,), s_hi, dtype=torch.float64), torch.full((3,), s_lo, dtype=torch.float64),
                    None, "euler")
    ref = SAMPLERS["ddim"](D, x, torch.tensor([s_hi, s_lo], dtype=torch.float64))
    assert torch.allclose(ours, ref, atol=1e-6)
    heun = ode_step(D, x, torch.full((3,), s_hi, dtype=torch.float64), torch.full((3,), s_lo, dtype=torch.float64),
                    None, "heun")
    assert torch.allclose(heun, SAMPLERS["heun"](D, x, torch.tensor([s_hi, s_lo], dtype=torch.float64)), atol=1e-6)


def test_ode_step_is_exact_for_a_gaussian_denoiser():
    """Data N(0, 1): D(x, s) = x / (1 + s^2), the ODE solution is x(s) = x sqrt((1 + s^2) / (1 + s0^2)); Heun is
    closer to it than Euler."""
    D = lambda x, s, c=None: x / (1 + torch.as_tensor(s, dtype=x.dtype).reshape(-1, 1) ** 2)  # noqa: E731
    x = torch.ones(1, 1) * 3.0
    s0, s1 = torch.tensor([2.0], dtype=torch.float64), torch.tensor([1.5], dtype=torch.float64)
    exact = 3.0 * math.sqrt((1 + 1.5**2) / (1 + 2.0**2))
    err_e = abs(ode_step(D, x, s0, s1, None, "euler").item() - exact)
    err_h = abs(ode_step(D, x, s0, s1, None, "heun").item() - exact)
    assert err_h < err_e < 0.1


def test_distance_kinds_and_bad_names():
    a, b = torch.zeros(2, 3, 2, 2), torch.ones(2, 3, 2, 2)
    assert torch.allclose(distance(a, b, "l2"), torch.ones(2))
    assert torch.allclose(distance(a, b, "l1"), torch.ones(2))
    c = 0.00054 * math.sqrt(12)
    assert torch.allclose(distance(a, b, "huber"), torch.full((2,), math.sqrt(12 + c**2) - c))
    with pytest.raises(ValueError, match="unknown distance 'l3'; expected one of: l2, l1, huber"):
        distance(a, b, "l3")
    with pytest.raises(ValueError, match="unknown solver 'rk4'"):
        ode_step(lambda x, s, c: x, a, torch.ones(2), torch.ones(2) / 2, None, "rk4")


def test_sample_consistency_one_step_is_one_evaluation_and_multistep_renoises():
    calls = []

    def f(x, sigma, cond=None):
        calls.append(sigma.clone())
        return torch.zeros_like(x)  # a "model" that always answers 0: x after re-noising is pure noise

    x = torch.randn(4, 1, 2, 2)
    out = sample_consistency(f, x, torch.tensor([80.0, 0.0], dtype=torch.float64))
    assert len(calls) == 1 and torch.equal(calls[0], torch.full((4,), 80.0, dtype=torch.float64))
    assert torch.equal(out, torch.zeros_like(x))
    calls.clear()
    seen = []
    sample_consistency(f, x, torch.tensor([80.0, 3.0, 0.0], dtype=torch.float64), rng=SampleRNG(range(4)),
                       sigma_min=0.002, callback=lambda i, s, x, d: seen.append((i, s, x.std().item())))
    assert [c[0].item() for c in calls] == [80.0, 3.0]
    assert seen[0][1] == 3.0 and 1.0 < seen[0][2] < 6.0  # re-noised to sigma ~ 3
    with pytest.raises(ValueError, match="re-noises between steps"):
        sample_consistency(f, x, torch.tensor([80.0, 3.0, 0.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="decrease strictly"):
        sample_consistency(f, x, torch.tensor([1.0, 3.0], dtype=torch.float64))


def test_discrete_grid_endpoints_used_by_lcm():
    """lcm samples on training timesteps: the first sigma is the table's last (sigma_max), the grid ends at 0."""
    ab = make_alpha_bar("linear", 1000)
    s = discrete_sigmas(ab, 4)
    assert s[-1] == 0 and s[0] == ((1 - ab[-1]) / ab[-1]).sqrt()


# ------------------------------------------------------------------------------------------ the lcm family

FAST = ["train.batch_size=8", "train.log_every=1", "train.n_samples=4", "train.trackers=none"]
AE = ["model.channels=4", "model.downsample=2", "model.latent_channels=2", "model.disc_start=1", "model.disc_channels=4"]
LDM = ["model.cond=class", "model.base_channels=8", "model.channel_mult=[1]", "model.attn_resolutions=[4]",
       "model.prediction=v"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A tiny first stage -> class-conditional ldm teacher -> lcm chain on digits (seconds)."""
    from conftest import run_cli

    root = tmp_path_factory.mktemp("lcm")
    assert run_cli("train", "autoencoder-kl", "--data", "digits", *AE, *FAST, "train.steps=3", "--out", root / "ae") == 0
    assert run_cli("train", "ldm", "--data", "digits", *LDM, f"model.autoencoder={root / 'ae'}", *FAST,
                   "train.steps=3", "--out", root / "ldm") == 0
    assert run_cli("train", "lcm", "--data", "digits", f"model.teacher={root / 'ldm'}", "model.skip=100", *FAST,
                   "train.steps=3", "--out", root / "lcm") == 0
    return root


def _cond(n):
    return {"y": torch.arange(n) % 10}


def test_boundary_condition_holds_exactly_for_any_weights(runs):
    import genlab

    m = genlab.load(runs / "lcm").model
    with torch.no_grad():
        for p in m.student.unet.parameters():
            p.add_(torch.randn_like(p))  # whatever the network, f(z, sigma_min) = z
    z = torch.randn(3, *m.latent_shape) * 2
    c = m.tfam.sample_conditions(m.teacher, _cond(3), 3)
    out = m.f(m.student, z, torch.full((3,), m.sigma_min, dtype=torch.float64), c)
    assert torch.equal(out, z)
    far = m.f(m.student, z, torch.full((3,), m.sigmas_at(torch.tensor(0)).item(), dtype=torch.float64), c)
    assert not torch.allclose(far, z)


def test_skipping_grid_and_sampling_schedules(runs):
    import genlab

    m = genlab.load(runs / "lcm").model
    assert m.N == round(999 / 100) and m.grid[0] == 999 and m.grid[-1] == 0
    assert ((m.grid[:-1] - m.grid[1:]) - 100).abs().max() <= 1  # pairs ~k timesteps apart
    from genlab.models.lcm import sampling_sigmas

    one = sampling_sigmas(m, 1)
    assert one.tolist() == [m.sigma_max, 0.0]
    four = sampling_sigmas(m, 4)
    assert len(four) == 5 and four[0] == m.sigma_max and four[-1] == 0 and (four[1:] < four[:-1]).all()
    with pytest.raises(ValueError, match=r"lcm samples in 1..10 steps"):
        sampling_sigmas(m, 11)


def test_one_step_student_runs_through_the_sampler_api(runs, tmp_path):
    """Run.sample(steps=1) is decode(f(z_T, sigma_max)): one network evaluation from the prior, per-image noise."""
    from conftest import run_cli

    import genlab
    from genlab.samplers.consistency import sample_consistency

    run = genlab.load(runs / "lcm")
    m = run.model
    x = run.sample(4, seed=3, cond=_cond(4), steps=1)
    assert x.shape == (4, 1, 8, 8) and torch.isfinite(x).all() and x.abs().max() <= 1
    calls = []
    z_T = SampleRNG.from_generator(4, torch.Generator().manual_seed(3)).randn(*m.latent_shape)
    z_T = z_T * math.sqrt(1 + m.sigma_max**2)
    c = m.tfam.sample_conditions(m.teacher, _cond(4), 4)
    f = lambda z, s, c: (calls.append(1), m.f(m.student, z, s, c))[1]  # noqa: E731
    z0 = sample_consistency(f, z_T, torch.tensor([m.sigma_max, 0.0], dtype=torch.float64), cond=c)
    assert len(calls) == 1
    assert torch.allclose(x, m.teacher.decode(z0).clamp(-1, 1), atol=1e-5)
    assert torch.allclose(run.sample(2, seed=3, cond=_cond(2), steps=1), x[:2], atol=1e-5)  # batch-size independent
    for steps in (2, 4, 8):
        assert torch.isfinite(run.sample(4, seed=0, cond=_cond(4), steps=steps)).all()
    assert run_cli("sample", runs / "lcm", "--steps", "1", "--n", "4", "--out", tmp_path / "g.png") == 0
    assert (tmp_path / "g.png").exists()


def test_teacher_and_first_stage_are_frozen_and_not_in_the_checkpoint(runs):
    import genlab
    from genlab.training.checkpoint import latest_checkpoint

    ck = latest_checkpoint(runs / "lcm" / "checkpoints")
    heads = {k.split("/")[0] + "/" + k.split("/")[1].split(".")[0] for k in ck.tensors if k != "rng/torch_cpu"}
    assert heads == {"model/student", "model/target", "ema/student", "optim/student"}
    assert not [k for k in ck.tensors if "first_stage" in k or "teacher" in k]
    # the teacher is stored once as a dependency (with its own first stage below it), unchanged by distillation
    assert (runs / "lcm" / "deps" / "teacher" / "deps" / "autoencoder" / "checkpoints").is_dir()
    lcm, ldm = genlab.load(runs / "lcm", ema=False), genlab.load(runs / "ldm")
    for (k, a), b in zip(lcm.model.teacher.state_dict().items(), ldm.model.state_dict().values()):
        assert torch.equal(a, b), k
    assert all(not p.requires_grad for p in lcm.model.teacher.parameters())
    assert lcm.model.student.first_stage is lcm.model.teacher.first_stage  # one shared, frozen first stage
    moved = [k for k, v in lcm.model.student.unet.state_dict().items()
             if not torch.equal(v, ldm.model.unet.state_dict()[k])]
    assert moved  # the student trained


def _train(*args):
    from conftest import run_cli

    return run_cli("train", "lcm", *args, *FAST, "train.steps=1")


def test_bad_input_is_a_clear_error(runs, tmp_path, capsys):
    import genlab

    assert _train("--data", "digits", "--out", tmp_path / "a") == 2  # no teacher
    assert "model.teacher=RUN" in capsys.readouterr().err
    assert _train("--data", "digits", f"model.teacher={runs / 'ae'}", "--out", tmp_path / "b") == 2
    assert "is a 'autoencoder-kl' run; lcm needs one of: ldm" in capsys.readouterr().err
    assert _train("--data", "fashion-mnist", f"model.teacher={runs / 'ldm'}", "--out", tmp_path / "c") == 2
    assert "trained on data of shape [1, 8, 8]" in capsys.readouterr().err
    assert _train("--data", "digits", f"model.teacher={runs / 'ldm'}", "model.skip=0", "--out", tmp_path / "d") == 2
    assert "model.skip must be in 1..999" in capsys.readouterr().err
    assert _train("--data", "digits", f"model.teacher={runs / 'ldm'}", "model.solver=rk4", "--out", tmp_path / "e") == 2
    run = genlab.load(runs / "lcm")
    with pytest.raises(ValueError, match="guidance 3.0 distilled in"):
        run.sample(2, cond=_cond(2), guidance=5.0)
    with pytest.raises(ValueError, match="unknown sampler 'ddim' for lcm"):
        run.sample(2, cond=_cond(2), sampler="ddim")
    with pytest.raises(ValueError, match="lcm samples in 1..10 steps"):
        run.sample(2, cond=_cond(2), steps=50)
