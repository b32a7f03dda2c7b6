"""Progressive distillation (Salimans & Ho 2022): the target maths, the nested grid, a toy student that matches
its teacher's two steps with one, frozen teachers, the stage command and bad input."""

import json
import types

import pytest
import torch
from conftest import FAST_TRAIN, plain_step, run_cli, spec_for

from genlab.data.toys import make_toy
from genlab.errors import UsageError
from genlab.models import ddpm, distill
from genlab.rng import SampleRNG
from genlab.samplers import VPDenoiser, make_alpha_bar
from genlab.training.checkpoint import latest_checkpoint
from genlab.training.distill_stages import plan


def _teacher_run(model, family="ddpm", shape=(2,)):
    """What the loop passes as deps["teacher"]: a frozen run with .model, .family_name, .spec, .config."""
    model.requires_grad_(False).eval()
    return types.SimpleNamespace(model=model, family_name=family, spec=spec_for(shape),
                                 config=types.SimpleNamespace(data=types.SimpleNamespace(name="ring8")))


def _toy_teacher(prediction="v", steps=600, seed=0):
    """A small ring8 DDPM trained for a few seconds (v-prediction, as the paper recommends for distillation)."""
    torch.manual_seed(seed)
    cfg = ddpm.Config(mlp_hidden=64, mlp_layers=2, prediction=prediction, lr=2e-3, timesteps=1000)
    model = ddpm.build(cfg, spec_for((2,)), {})
    opts = ddpm.make_optimizers(model, cfg)
    data = make_toy("ring8", 4096, seed=0)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, len(data), (256,), generator=g)
        plain_step(ddpm, model, {"x": data[idx].float()}, opts)
    return model


def test_grid_nests_and_ends_at_zero():
    den = VPDenoiser(lambda x, t: x, make_alpha_bar("linear", 1000))
    for n in (1, 2, 4, 8):
        g, g2 = distill.grid(den, n), distill.grid(den, 2 * n)
        assert len(g) == n + 1 and g[-1] == 0 and g[0] == den.sigma_max
        torch.testing.assert_close(g2[::2], g, rtol=1e-12, atol=0)
        assert (g[1:] < g[:-1]).all()


def test_target_makes_one_ddim_step_equal_two_teacher_steps():
    """x~ from distill_target, used as the denoised value of one step s0 -> s2, lands on the teacher's x''."""
    torch.manual_seed(0)
    W = torch.randn(2, 2) * 0.3

    def teacher(x, sigma, cond=None):  # any smooth denoiser
        return torch.tanh(x @ W) / (1 + torch.as_tensor(sigma, dtype=x.dtype).reshape(-1, 1))

    x = torch.randn(6, 2) * 3
    s0 = torch.tensor([3.0, 3, 1, 1, 0.5, 0.5], dtype=torch.float64)
    s1, s2 = s0 / 2, torch.tensor([1.0, 0, 0.3, 0, 0.1, 0], dtype=torch.float64)
    target = distill.distill_target(teacher, x, s0, s1, s2, None)
    b = lambda s: s.float().reshape(-1, 1)  # noqa: E731
    x1 = teacher(x, s0) + b(s1) * (x - teacher(x, s0)) / b(s0)
    x2 = teacher(x1, s1) + b(s2) * (x1 - teacher(x1, s1)) / b(s1)
    torch.testing.assert_close(target + b(s2) * (x - target) / b(s0), x2, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(target[s2 == 0], x2[s2 == 0])  # the last step: the target is the teacher's output


def test_loss_weights():
    s = torch.tensor([0.1, 1.0, 10.0], dtype=torch.float64)
    torch.testing.assert_close(distill.loss_weight(s, "truncated_snr"), torch.tensor([100.0, 1.0, 1.0], dtype=torch.float64))
    torch.testing.assert_close(distill.loss_weight(s, "snr_plus_one"), torch.tensor([101.0, 2.0, 1.01], dtype=torch.float64))
    with pytest.raises(ValueError, match="weighting"):
        distill.loss_weight(s, "snr")


def test_one_step_student_matches_the_teachers_two_steps():
    """Salimans & Ho 2022, Algorithm 2 on ring8: after distillation the student's 1 DDIM step reproduces the
    teacher's 2-step DDIM output from the same noise, much closer than the student did before training."""
    teacher = _toy_teacher()
    cfg = distill.Config(teacher_steps=2, lr=1e-3, weighting="snr_plus_one")
    torch.manual_seed(1)
    student = distill.build(cfg, spec_for((2,)), {"teacher": _teacher_run(teacher)})
    assert student.steps == 1
    n = 512
    g = torch.Generator().manual_seed(7)
    x_T = SampleRNG.from_generator(n, g).randn(2) * (1 + distill.grid(student.teacher_denoiser(), 1)[0] ** 2).sqrt()
    target = distill.sample_teacher(student, x_T.clone(), 2)

    def gap():
        out = distill.sample(student, n, generator=torch.Generator().manual_seed(7))
        return (out - target).norm(dim=1).mean().item()

    before = gap()
    opts = distill.make_optimizers(student, cfg)
    data = make_toy("ring8", 4096)
    gen = torch.Generator().manual_seed(3)
    student.train()
    for _ in range(400):
        idx = torch.randint(0, len(data), (256,), generator=gen)
        plain_step(distill, student, {"x": data[idx].float()}, opts)
    after = gap()
    spread = target.std(0).mean().item()  # ~0.7 for the ring of radius 1
    assert after < 0.1 * spread, (before, after, spread)
    assert after < 0.5 * before, (before, after)
    # the teacher did not move
    assert all(not p.requires_grad for p in student.teacher.parameters())


def test_student_starts_as_a_copy_of_the_teacher():
    teacher = _toy_teacher(steps=5)
    student = distill.build(distill.Config(teacher_steps=4), spec_for((2,)), {"teacher": _teacher_run(teacher)})
    for (n1, p1), (n2, p2) in zip(teacher.named_parameters(), student.student.named_parameters()):
        assert n1 == n2 and torch.equal(p1, p2) and p2.requires_grad and p1.data_ptr() != p2.data_ptr()
    # the 2-step student before training is the teacher sampled on the same 2-step grid
    x = distill.sample(student, 16, generator=torch.Generator().manual_seed(0))
    x_T = SampleRNG.from_generator(16, torch.Generator().manual_seed(0)).randn(2)
    x_T = x_T * (1 + distill.grid(student.teacher_denoiser(), 2)[0] ** 2).sqrt()
    torch.testing.assert_close(x, distill.sample_teacher(student, x_T, 2))


def test_bad_input():
    teacher = _toy_teacher(steps=1)
    run = _teacher_run(teacher)
    with pytest.raises(ValueError, match="'vae' run"):
        distill.build(distill.Config(), spec_for((2,)), {"teacher": _teacher_run(teacher, family="vae")})
    with pytest.raises(ValueError, match="shape"):
        distill.build(distill.Config(), spec_for((1, 8, 8)), {"teacher": run})
    with pytest.raises(ValueError, match="even"):
        distill.build(distill.Config(teacher_steps=3), spec_for((2,)), {"teacher": run})
    with pytest.raises(ValueError, match="teacher run"):
        distill.build(distill.Config(), spec_for((2,)), {})
    with pytest.raises(ValueError, match="class_cond=false"):
        distill.build(distill.Config(class_cond=True), spec_for((2,)), {"teacher": run})
    student = distill.build(distill.Config(teacher_steps=8), spec_for((2,)), {"teacher": run})
    with pytest.raises(ValueError, match="exactly 4 step"):
        distill.sample(student, 2, steps=2)
    with pytest.raises(ValueError, match="ddim only"):
        distill.sample(student, 2, sampler="heun")
    # a 1-step student cannot be distilled further
    one = distill.build(distill.Config(teacher_steps=2), spec_for((2,)), {"teacher": run})
    with pytest.raises(ValueError, match="1 step"):
        distill.build(distill.Config(), spec_for((2,)), {"teacher": _teacher_run(one, family="distill")})


def test_stage_plan():
    assert plan(64, 1) == [32, 16, 8, 4, 2, 1]
    assert plan(8, 2) == [4, 2]
    with pytest.raises(UsageError, match="halve"):
        plan(6, 1)
    with pytest.raises(UsageError):
        plan(8, 3)
    with pytest.raises(UsageError):
        plan(4, 4)


def test_distill_command_runs_every_stage_with_frozen_teachers(tmp_path, capsys):
    teacher = tmp_path / "teacher"
    tiny = ["model.mlp_hidden=16", "model.mlp_layers=1", *FAST_TRAIN]
    assert run_cli("train", "ddpm", "--data", "ring8", *tiny, "train.steps=3", "--out", teacher) == 0
    out = tmp_path / "pd"
    assert run_cli("distill", teacher, "--out", out, "--to-steps", "1", "model.teacher_steps=4", "train.steps=2",
                   *FAST_TRAIN) == 0
    stages = [out / "stage-1-2steps", out / "stage-2-1steps"]
    for i, stage in enumerate(stages):
        info = json.loads((stage / "run.json").read_text())
        assert info["status"] == "done"
        ck = latest_checkpoint(stage / "checkpoints")
        assert all(k.split("/", 1)[1].startswith("student.") for k in ck.tensors if k.startswith(("model/", "ema/")))
        assert ck.meta["deps"]["teacher"]["source"] == str((teacher if i == 0 else stages[0]).resolve())
        assert (stage / "deps" / "teacher" / "checkpoints").is_dir()
    # each stage is a sampleable run with its own step count
    assert run_cli("sample", stages[1], "--n", "4", "--out", tmp_path / "s1") == 0
    assert run_cli("sample", stages[0], "--n", "4", "--steps", "2", "--out", tmp_path / "s2") == 0
    capsys.readouterr()
    assert run_cli("sample", stages[1], "--n", "4", "--steps", "2", "--out", tmp_path / "s3") == 2
    assert "exactly 1 step" in capsys.readouterr().err
    # running it again keeps finished stages
    assert run_cli("distill", teacher, "--out", out, "--to-steps", "1", "model.teacher_steps=4", "train.steps=2",
                   *FAST_TRAIN) == 0
    assert "is done; kept" in capsys.readouterr().out
    # a teacher of the wrong family is a usage error
    assert run_cli("train", "vae", "--data", "ring8", "model.mlp_hidden=16", "model.latent_dim=2", *FAST_TRAIN,
                   "train.steps=2", "--out", tmp_path / "vae") == 0
    assert run_cli("distill", tmp_path / "vae", "--out", tmp_path / "bad", *FAST_TRAIN) == 2
    assert "ddpm or distill" in capsys.readouterr().err
    assert run_cli("train", "distill", "--data", "ring8", f"model.teacher={tmp_path / 'vae'}", *FAST_TRAIN,
                   "train.steps=2", "--out", tmp_path / "bad2") == 2
