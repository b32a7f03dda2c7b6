"""Consistency models: the boundary condition f(x, sigma_min) = x, the noise grid and the CT schedule, the
target update, CD loss decreasing on a toy, the teacher frozen and kept out of checkpoints, bad input."""

import json
import shutil
import types

import pytest
import torch
from conftest import FAST_TRAIN, plain_step, run_cli, spec_for

from genlab.models import consistency as cm_family
from genlab.models import ddpm
from genlab.training.checkpoint import latest_checkpoint
from genlab.training.run import load_run

TINY_CT = dict(mlp_hidden=16, mlp_layers=1, base_channels=8, channel_mult=[1, 2], attn_resolutions=[4])
TEACHER = ["ddpm", "--data", "ring8", "model.mlp_hidden=16", "model.mlp_layers=1", *FAST_TRAIN]


def _teacher(shape, classes=0):
    """A frozen ddpm model in the shape of a loaded run (what the loop passes as deps['teacher'])."""
    cfg = ddpm.Config(class_cond=classes > 0, mlp_hidden=16, mlp_layers=1, base_channels=8, channel_mult=[1, 2],
                      attn_resolutions=[4], num_res_blocks=1, dropout=0.1)
    torch.manual_seed(1)
    spec = spec_for(shape, classes)
    model = ddpm.build(cfg, spec, {}).requires_grad_(False).eval()
    return types.SimpleNamespace(model=model, spec=spec, family="ddpm")


def _cd(shape, classes=0, **kw):
    cfg = cm_family.Config(mode="cd", teacher="t", class_cond=classes > 0, **kw)
    return cm_family.build(cfg, spec_for(shape, classes), {"teacher": _teacher(shape, classes)})


@pytest.mark.parametrize("shape", [[2], [1, 8, 8]])
@pytest.mark.parametrize("mode", ["ct", "cd"])
def test_boundary_condition_holds_exactly_for_any_weights(shape, mode):
    torch.manual_seed(0)
    model = (cm_family.build(cm_family.Config(**TINY_CT), spec_for(shape), {}) if mode == "ct" else _cd(shape))
    with torch.no_grad():
        for p in model.net.parameters():  # random, large weights: the network output is far from x
            p.add_(torch.randn_like(p))
    x = torch.randn(5, *shape)
    sigma = torch.full((5,), model.sigma_min, dtype=torch.float64)
    assert torch.equal(model(x, sigma), x)  # c_skip = 1, c_out = 0 exactly
    # and away from the boundary the network matters
    assert not torch.allclose(model(x, sigma * 100), x)
    c_skip, c_out = cm_family.c_skip_out(torch.tensor([model.sigma_min, 1.0, 1e3], dtype=torch.float64),
                                         model.sigma_min, 0.5)
    assert c_skip[0] == 1 and c_out[0] == 0 and c_skip[2] < 1e-6 and torch.allclose(c_skip + c_out, torch.ones(3, dtype=torch.float64))


def test_noise_grid_and_ct_schedule():
    g = cm_family.noise_grid(0.002, 80.0, 18)
    assert g.shape == (18,) and g[0] == 0.002 and g[-1] == 80.0 and (g[1:] > g[:-1]).all()
    # Song et al. 2023, App. C: N(0) = s0, N(K) = s1 + 1, mu(0) = mu0, mu rises with N
    assert cm_family.ct_schedule(0, 100, 2, 150, 0.9) == (2, pytest.approx(0.9))
    N, mu = cm_family.ct_schedule(100, 100, 2, 150, 0.9)
    assert N == 151 and mu == pytest.approx(0.9 ** (2 / 151))
    Ns = [cm_family.ct_schedule(k, 100, 2, 150, 0.9)[0] for k in range(0, 101, 10)]
    assert Ns == sorted(Ns) and cm_family.ct_schedule(500, 100, 2, 150, 0.9)[0] == 151  # held after K


def test_ct_step_moves_the_target_by_mu():
    torch.manual_seed(0)
    cfg = cm_family.Config(ct_total_steps=10, **TINY_CT)
    model = cm_family.build(cfg, spec_for([2]), {})
    opts = cm_family.make_optimizers(model, cfg)
    old_target = [p.clone() for p in model.target.parameters()]
    logs = plain_step(cm_family, model, {"x": torch.randn(8, 2)}, opts)
    N, mu = cm_family.ct_schedule(0, 10, cfg.ct_s0, cfg.ct_s1, cfg.ct_mu0)
    assert logs["num_scales"] == N and logs["target_decay"] == pytest.approx(mu)
    for t, old, p in zip(model.target.parameters(), old_target, model.net.parameters()):
        assert torch.allclose(t, mu * old + (1 - mu) * p, atol=1e-7)
        assert not t.requires_grad
    assert not any(p.grad is not None for p in model.target.parameters())


def _fixed_cd_loss(model, x, seed=0):
    """The CD loss on a fixed batch with fixed n and z (what train_step computes, without the update)."""
    g = torch.Generator().manual_seed(seed)
    grid = cm_family.noise_grid(model.sigma_min, model.sigma_max, model.cfg.num_scales)
    n = torch.randint(0, len(grid) - 1, (len(x),), generator=g)
    z = torch.randn(x.shape, generator=g)
    s, s_next = grid[n], grid[n + 1]
    with torch.no_grad():
        x_next = x + s_next[:, None].float() * z
        x_hat = cm_family.ode_step(model.teacher_denoiser(), x_next, s_next, s, None, "heun")
        return cm_family.distance(model.f(model.net, x_next, s_next), cm_family._target(model, x_hat, s, None), "l2").mean().item()


def test_cd_loss_decreases_on_a_toy():
    """A ring8 teacher trained for a few hundred steps; the student's CD loss on a fixed batch (fixed n, z)
    falls several-fold in 150 steps, and the teacher's weights do not move."""
    from genlab.data.toys import make_toy

    torch.manual_seed(0)
    data = make_toy("ring8", 4096, seed=0).float()
    spec = spec_for([2])
    tcfg = ddpm.Config(mlp_hidden=64, mlp_layers=2, lr=2e-3)
    teacher = ddpm.build(tcfg, spec, {})
    topts = ddpm.make_optimizers(teacher, tcfg)
    g = torch.Generator().manual_seed(0)
    for _ in range(300):
        plain_step(ddpm, teacher, {"x": data[torch.randint(0, len(data), (128,), generator=g)]}, topts)
    teacher.requires_grad_(False).eval()
    frozen = [p.clone() for p in teacher.parameters()]
    dep = types.SimpleNamespace(model=teacher, spec=spec, family="ddpm")
    cfg = cm_family.Config(mode="cd", teacher="t", num_scales=8, target_decay=0.0, lr=1e-3)
    model = cm_family.build(cfg, spec, {"teacher": dep})
    opts = cm_family.make_optimizers(model, cfg)
    before = _fixed_cd_loss(model, data[:512])
    for _ in range(150):
        plain_step(cm_family, model, {"x": data[torch.randint(0, len(data), (64,), generator=g)]}, opts)
    after = _fixed_cd_loss(model, data[:512])
    assert after < 0.25 * before, (before, after)
    assert all(torch.equal(a, b) for a, b in zip(model.teacher.parameters(), frozen))


def test_sampling_one_and_multistep():
    torch.manual_seed(0)
    model = cm_family.build(cm_family.Config(**TINY_CT), spec_for([1, 8, 8], 3), {})
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    x1 = cm_family.sample(model, 4, generator=g(), steps=1)
    assert x1.shape == (4, 1, 8, 8) and x1.min() >= -1 and x1.max() <= 1
    # one step is f(sigma_max z) on the first draw of each image's stream
    from genlab.rng import SampleRNG

    z = SampleRNG.from_generator(4, g()).randn(1, 8, 8)
    with torch.no_grad():
        ref = model.f(model.net, z * model.sigma_max, torch.full((4,), model.sigma_max, dtype=torch.float64))
    assert torch.allclose(x1, ref.clamp(-1, 1), atol=1e-6)
    x2 = cm_family.sample(model, 4, generator=g(), steps=2)
    assert torch.allclose(x2, cm_family.sample(model, 4, generator=g(), steps=2, batch_size=3), atol=1e-6)
    assert cm_family.sample_taus(model, 3).__len__() == 2
    x3 = cm_family.sample(model, 4, generator=g(), steps=2, taus=[1.0])
    assert not torch.allclose(x2, x3)


def test_bad_sampling_input():
    model = cm_family.build(cm_family.Config(**TINY_CT), spec_for([2]), {})
    with pytest.raises(ValueError, match=r"takes 1\.\.151 steps"):
        cm_family.sample(model, 2, steps=200)
    with pytest.raises(ValueError, match="take 1 intermediate noise levels"):
        cm_family.sample(model, 2, steps=2, taus=[1.0, 0.5])
    with pytest.raises(ValueError, match="taus must decrease"):
        cm_family.sample(model, 2, steps=3, taus=[0.5, 1.0])
    with pytest.raises(ValueError, match="unknown sampler"):
        cm_family.sample(model, 2, sampler="heun")
    cd = _cd([2], num_scales=4)
    with pytest.raises(ValueError, match=r"takes 1\.\.4 steps"):
        cm_family.sample(cd, 2, steps=5)


def test_bad_teacher_input():
    spec = spec_for([2])
    with pytest.raises(ValueError, match="set model.teacher=RUN"):
        cm_family.build(cm_family.Config(mode="cd"), spec, {})
    with pytest.raises(ValueError, match="used by model.mode=cd only"):
        cm_family.build(cm_family.Config(mode="ct", teacher="x"), spec, {})
    with pytest.raises(ValueError, match=r"data of shape \[2\].*has \[1, 8, 8\]"):
        cm_family.build(cm_family.Config(mode="cd", teacher="t"), spec_for([1, 8, 8]), {"teacher": _teacher([2])})
    with pytest.raises(ValueError, match="set model.class_cond=true"):
        cm_family.build(cm_family.Config(mode="cd", teacher="t"), spec_for([2], 3), {"teacher": _teacher([2], 3)})


@pytest.fixture
def teacher_run(tmp_path):
    out = tmp_path / "teacher"
    assert run_cli("train", *TEACHER, "train.steps=3", "--out", out) == 0
    return out


def _cd_args(teacher, out, *extra):
    return ["train", "consistency", "--data", "ring8", "model.mode=cd", f"model.teacher={teacher}", "model.num_scales=6",
            "model.target_decay=0.5", *FAST_TRAIN, "train.ema_decay=0.9", *extra, "--out", out]


def test_teacher_is_frozen_and_absent_from_checkpoints(tmp_path, teacher_run):
    out = tmp_path / "cd"
    assert run_cli(*_cd_args(teacher_run, out, "train.steps=3")) == 0
    ck = latest_checkpoint(out / "checkpoints")
    assert not any(".teacher." in k or k.startswith(("model/teacher.", "ema/teacher.")) for k in ck.tensors)
    assert any(k.startswith("model/net.") for k in ck.tensors) and any(k.startswith("model/target.") for k in ck.tensors)
    assert {k.split(".")[0] for k in ck.tensors if k.startswith("ema/")} == {"ema/net"}  # the EMA averages net only
    assert ck.meta["deps"]["teacher"]["family"] == "ddpm"
    teacher = load_run(teacher_run)  # EMA weights: what the student distilled
    run = load_run(out)
    for k, v in teacher.model.state_dict().items():
        assert torch.equal(run.model.teacher.state_dict()[k], v), k  # not trained, not averaged
    assert not any(p.requires_grad for p in run.model.teacher.parameters())
    # the student moved away from its initialisation (the teacher's weights)
    assert any(not torch.equal(run.model.net.state_dict()[k], v) for k, v in teacher.model.state_dict().items())
    # sampleable after the teacher's folder is gone (the run keeps its own copy)
    shutil.rmtree(teacher_run)
    x = load_run(out).sample(4, seed=0)
    assert x.shape == (4, 2) and torch.isfinite(x).all()


def test_cd_resume_is_exact(tmp_path, teacher_run):
    """The target network is run state: a resumed run continues bit-exactly."""
    common = ["train.ckpt_every=2"]
    assert run_cli(*_cd_args(teacher_run, tmp_path / "full", *common, "train.steps=4")) == 0
    assert run_cli(*_cd_args(teacher_run, tmp_path / "part", *common, "train.steps=2")) == 0
    assert run_cli(*_cd_args(teacher_run, tmp_path / "part", *common, "train.steps=4"), "--resume") == 0
    a = latest_checkpoint(tmp_path / "full" / "checkpoints").tensors
    b = latest_checkpoint(tmp_path / "part" / "checkpoints").tensors
    for k in a:
        if not k.startswith("rng/"):
            assert torch.equal(a[k], b[k]), k
    losses = lambda p: [json.loads(line)["loss"] for line in (p / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    assert losses(tmp_path / "full") == losses(tmp_path / "part")


def test_cli_errors_for_wrong_teachers(tmp_path, teacher_run, capsys):
    vae = tmp_path / "vae"
    assert run_cli("train", "vae", "--data", "ring8", "model.mlp_hidden=8", *FAST_TRAIN, "train.steps=1", "--out", vae) == 0
    assert run_cli(*_cd_args(vae, tmp_path / "a", "train.steps=1")) == 2
    assert "is a 'vae' run; consistency needs one of: ddpm" in capsys.readouterr().err
    args = _cd_args(teacher_run, tmp_path / "b", "train.steps=1")
    args[args.index("ring8")] = "digits"
    assert run_cli(*args) == 2
    assert "trained on data of shape [2]" in capsys.readouterr().err
    assert run_cli("train", "consistency", "--data", "ring8", "model.mode=cd", *FAST_TRAIN, "train.steps=1",
                   "--out", tmp_path / "c") == 2
    assert "set model.teacher=RUN" in capsys.readouterr().err
