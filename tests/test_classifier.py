"""Classifier guidance (Dhariwal & Nichol 2021) and classifier-free guidance (Ho & Salimans 2022) with ddpm.

CFG convention in genlab (genlab/samplers/guidance.py): the scale s mixes D_uncond + s (D_cond - D_uncond), so
s = 1 is the conditional model and s = 0 the unconditional one; Ho & Salimans' w is s - 1, so their w = 0 is
genlab's guidance=1.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import FAST_TRAIN, plain_step, run_cli, spec_for

from genlab.models import classifier, ddpm
from genlab.rng import SampleRNG
from genlab.samplers import VPDenoiser, make_alpha_bar, sample_ddim
from genlab.samplers.classifier_guidance import VPClassifier, classifier_guidance

TINY_UNET = dict(base_channels=8, channel_mult=[1, 2], num_res_blocks=1, attn_resolutions=[], dropout=0.0,
                 timesteps=100)


def _ddpm(class_cond=False, p_uncond=0.0, seed=0, **kw):
    torch.manual_seed(seed)
    cfg = ddpm.Config(class_cond=class_cond, p_uncond=p_uncond, **{**TINY_UNET, **kw})
    return ddpm.build(cfg, spec_for((1, 8, 8), 3), {}).eval()


def _classifier(seed=1, shape=(1, 8, 8), num_classes=3, **kw):
    torch.manual_seed(seed)
    cfg = classifier.Config(base_channels=8, channel_mult=[1, 2], timesteps=100, **kw)
    return classifier.build(cfg, spec_for(shape, num_classes), {}).eval()


# ------------------------------------------------------------------ classifier guidance: the maths on a toy


class GaussianData:
    """Exact denoiser of N(0, I) data in sigma space: E[x_0 | x] = x / (1 + sigma^2)."""

    def __call__(self, x, sigma, cond=None):
        s = torch.as_tensor(sigma, dtype=x.dtype).reshape(-1, *([1] * (x.dim() - 1)))
        return x / (1 + s**2)


def _logistic(k=4.0):
    """A known classifier on 2-D points: p(y=1 | x) = sigmoid(k x_1), p(y=0 | x) = sigmoid(-k x_1)."""

    def log_prob(x, sigma, y):
        logit = k * x[:, 0]
        return torch.where(y == 1, F.logsigmoid(logit), F.logsigmoid(-logit))

    return log_prob


def test_classifier_guidance_adds_scale_sigma2_grad_log_p():
    x = torch.randn(5, 2, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 1, 0, 1])
    sigma, s, k = 0.7, 2.5, 4.0
    D = GaussianData()
    guided = classifier_guidance(D, _logistic(k), s)(x, sigma, {"y": y})
    # d/dx_1 log sigmoid(+-k x_1) = +-k sigmoid(-+k x_1); zero along x_2
    sign = torch.where(y == 1, 1.0, -1.0)
    grad = torch.zeros_like(x)
    grad[:, 0] = sign * k * torch.sigmoid(-sign * k * x[:, 0])
    torch.testing.assert_close(guided, D(x, sigma) + s * sigma**2 * grad)


def test_classifier_guidance_moves_samples_towards_the_class_and_scale_zero_is_unguided():
    n = 400
    rng = SampleRNG(range(n))
    sigmas = torch.tensor([20.0, 5.0, 2.0, 1.0, 0.5, 0.2, 0.05, 0.0], dtype=torch.float64)
    x_T = rng.randn(2) * math.sqrt(1 + 20.0**2)
    D = GaussianData()
    plain = sample_ddim(D, x_T.clone(), sigmas)
    means = {}
    for label in (0, 1):
        cond = {"y": torch.full((n,), label)}
        same = sample_ddim(classifier_guidance(D, _logistic(), 0.0), x_T.clone(), sigmas, cond=cond)
        assert torch.equal(same, plain)  # scale 0: exactly the unguided sampler
        out = sample_ddim(classifier_guidance(D, _logistic(), 3.0), x_T.clone(), sigmas, cond=cond)
        means[label] = out.mean(0)
        assert abs(out[:, 1].mean()) < 0.2  # the classifier ignores x_2: no pull there
    assert means[1][0] > 0.5 and means[0][0] < -0.5  # pulled towards each class's side of x_1 = 0
    assert abs(plain[:, 0].mean()) < 0.2


def test_vp_classifier_sees_x_t_and_the_denoisers_timestep():
    ab = make_alpha_bar("linear", 100)
    seen = {}

    def net(x_t, t):
        seen["x_t"], seen["t"] = x_t, t
        return torch.stack([x_t.flatten(1).sum(1), -x_t.flatten(1).sum(1)], dim=1)

    sigmas = VPDenoiser(net, ab).sigmas
    x = torch.randn(3, 1, 2, 2)
    lp = VPClassifier(net, ab)(x, sigmas[[10, 50, 99]], torch.tensor([0, 1, 0]))
    assert seen["t"].tolist() == [10, 50, 99]
    torch.testing.assert_close(seen["x_t"], x * ab[[10, 50, 99]].sqrt().float().reshape(3, 1, 1, 1))
    logits = net(seen["x_t"], seen["t"])
    torch.testing.assert_close(lp, F.log_softmax(logits, -1)[torch.arange(3), torch.tensor([0, 1, 0])])


# ------------------------------------------------------------------ classifier guidance through ddpm.sample


def test_ddpm_with_a_classifier_at_scale_zero_equals_the_plain_sampler():
    clf = _classifier()
    for model, label_to_model in ((_ddpm(), False), (_ddpm(class_cond=True), True)):
        cond = {"y": torch.tensor([0, 1, 2, 1])}
        base = ddpm.sample(model, 4, cond=cond if label_to_model else None, generator=torch.Generator().manual_seed(3),
                           steps=5, sampler="ddim", eta=0.0)
        zero = ddpm.sample(model, 4, cond=cond, generator=torch.Generator().manual_seed(3), steps=5, sampler="ddim",
                           eta=0.0, guidance=0.0, classifier=clf)
        assert torch.equal(base, zero)
        guided = ddpm.sample(model, 4, cond=cond, generator=torch.Generator().manual_seed(3), steps=5, sampler="heun",
                             guidance=5.0, classifier=clf)
        assert guided.shape == (4, 1, 8, 8) and torch.isfinite(guided).all()


def test_classifier_guidance_raises_the_classifiers_probability_of_the_target():
    """A random-init classifier is still a function of x_t: guiding must raise its own log p(y | x_0-ish)."""
    model, clf = _ddpm(), _classifier()
    y = torch.full((16,), 2)

    def final_log_p(scale):
        x = ddpm.sample(model, 16, cond={"y": y}, generator=torch.Generator().manual_seed(0), steps=10,
                        sampler="ddim", eta=0.0, guidance=scale, classifier=clf)
        with torch.no_grad():
            return F.log_softmax(clf(x, torch.zeros(16, dtype=torch.long)), -1)[:, 2].mean()

    assert final_log_p(50.0) > final_log_p(0.0) + 0.01


def test_classifier_guidance_bad_input():
    model = _ddpm()
    kw = dict(generator=torch.Generator().manual_seed(0), steps=3)
    with pytest.raises(ValueError, match="needs class labels"):
        ddpm.sample(model, 2, classifier=_classifier(), **kw)
    with pytest.raises(ValueError, match="shape"):
        ddpm.sample(model, 2, cond={"y": 1}, classifier=_classifier(shape=(1, 6, 6)), **kw)
    with pytest.raises(ValueError, match="noise schedule"):
        ddpm.sample(model, 2, cond={"y": 1}, classifier=_classifier(schedule="cosine"), **kw)
    with pytest.raises(ValueError, match="trained 'classifier' run"):
        ddpm.sample(model, 2, cond={"y": 1}, classifier=torch.nn.Linear(2, 2), **kw)
    with pytest.raises(ValueError, match=r"labels must be in 0\.\.2"):
        ddpm.sample(model, 2, cond={"y": 5}, classifier=_classifier(), **kw)
    with pytest.raises(ValueError, match="classes"):
        ddpm.sample(_ddpm(class_cond=True), 2, cond={"y": 1}, classifier=_classifier(num_classes=4), **kw)


# ------------------------------------------------------------------ classifier-free guidance


def test_cfg_scale_one_is_the_conditional_sampler_and_zero_the_unconditional_one():
    """genlab's s = 1 (Ho & Salimans' w = 0) equals the conditional model; s = 0 equals sampling with the null label."""
    model = _ddpm(class_cond=True, p_uncond=0.1)
    kw = dict(steps=6, sampler="ddim", eta=0.0)
    y = torch.tensor([0, 2, 1])
    g = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    guided_w0 = ddpm.sample(model, 3, cond={"y": y}, generator=g(), guidance=1.0, **kw)
    D = VPDenoiser(model, ddpm.alpha_bar(model.cfg), "eps", clip_denoised=1.0)
    sigmas = ddpm.discrete_sigmas(ddpm.alpha_bar(model.cfg), 6)
    x_T = SampleRNG.from_generator(3, g()).randn(1, 8, 8) * (1 + sigmas[0] ** 2).sqrt().item()
    torch.testing.assert_close(guided_w0, sample_ddim(D, x_T.clone(), sigmas, cond={"y": y}).clamp(-1, 1))
    uncond = ddpm.sample(model, 3, cond={"y": y}, generator=g(), guidance=0.0, **kw)
    null = torch.full((3,), model.num_classes)
    torch.testing.assert_close(uncond, sample_ddim(D, x_T.clone(), sigmas, cond={"y": null}).clamp(-1, 1))
    # a scale between mixes the two denoisers linearly (checked on one step, before clipping)
    Dg = ddpm.denoiser(model, 2.5)
    xs, s = torch.randn(3, 1, 8, 8), sigmas[2]
    Du = VPDenoiser(model, ddpm.alpha_bar(model.cfg), "eps")
    expect = Du(xs, s, {"y": null}) + 2.5 * (Du(xs, s, {"y": y}) - Du(xs, s, {"y": null}))
    torch.testing.assert_close(Dg(xs, s, {"y": y}), expect.clamp(-1, 1), atol=1e-5, rtol=1e-5)


def test_p_uncond_one_trains_the_unconditional_model():
    """With every label dropped the update cannot depend on the labels: it equals training with y = None."""
    x = torch.randn(8, 1, 8, 8).clamp(-1, 1)
    outs = []
    for y in (torch.tensor([0, 1, 2, 0, 1, 2, 0, 1]), torch.tensor([2, 2, 2, 2, 1, 1, 0, 0]), None):
        model = _ddpm(class_cond=True, p_uncond=1.0).train()
        opts = ddpm.make_optimizers(model, model.cfg)
        batch = {"x": x, "y": y if y is not None else torch.zeros(8, dtype=torch.long)}
        if y is None:  # the reference: the same step with the network's own "no label" input
            batch["y"] = torch.full((8,), model.num_classes)
        for _ in range(3):  # the zero-initialised output layer needs a step before labels can matter
            plain_step(ddpm, model, batch, opts)
        outs.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])
    # and without dropout the labels do matter
    ref = []
    for y in (torch.tensor([0, 1, 2, 0, 1, 2, 0, 1]), torch.tensor([2, 2, 2, 2, 1, 1, 0, 0])):
        model = _ddpm(class_cond=True, p_uncond=0.0).train()
        opts = ddpm.make_optimizers(model, model.cfg)
        for _ in range(3):
            plain_step(ddpm, model, {"x": x, "y": y}, opts)
        ref.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert not torch.equal(ref[0], ref[1])


def test_cfg_bad_input():
    with pytest.raises(ValueError, match="class-conditional"):
        ddpm.sample(_ddpm(), 2, generator=torch.Generator().manual_seed(0), steps=3, guidance=2.0, cond=None)
    with pytest.raises(ValueError, match="p_uncond"):
        ddpm.denoiser(_ddpm(class_cond=True, p_uncond=0.0), 2.0)
    with pytest.raises(ValueError, match="needs class labels"):
        ddpm.sample(_ddpm(class_cond=True, p_uncond=0.1), 2, generator=torch.Generator().manual_seed(0), steps=3,
                    guidance=2.0)


def test_cfg_with_the_karras_grid():
    model = _ddpm(class_cond=True, p_uncond=0.1)
    x = ddpm.sample(model, 2, cond={"y": 1}, generator=torch.Generator().manual_seed(0), steps=4, sampler="heun",
                    sigmas="karras", guidance=3.0)
    assert x.shape == (2, 1, 8, 8) and torch.isfinite(x).all()


# ------------------------------------------------------------------ the classifier family


def test_classifier_training_step_and_accuracy_by_noise():
    clf = _classifier().train()
    batch = {"x": torch.rand(8, 1, 8, 8) * 2 - 1, "y": torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])}
    logs = plain_step(classifier, clf, batch, classifier.make_optimizers(clf, clf.cfg))
    assert set(logs) == {"loss", "acc"} and math.isfinite(logs["loss"])
    acc = classifier.accuracy_by_noise(clf, batch["x"], batch["y"], timesteps=(0, 50, 99))
    assert list(acc) == [0, 50, 99] and all(0 <= a <= 1 for a in acc.values())
    with pytest.raises(ValueError, match="out of range"):
        classifier.accuracy_by_noise(clf, batch["x"], batch["y"], timesteps=(100,))


def test_classifier_learns_labels_at_low_noise():
    """Two classes told apart by brightness: a few dozen steps at t = 0 get them right, at t = T-1 it is chance."""
    torch.manual_seed(0)
    y = torch.arange(64) % 2
    x = torch.where(y[:, None, None, None] == 1, 0.6, -0.6) + 0.1 * torch.randn(64, 1, 8, 8)
    clf = _classifier(num_classes=2).train()
    opts = classifier.make_optimizers(clf, clf.cfg)
    for _ in range(30):
        plain_step(classifier, clf, {"x": x, "y": y}, opts)
    acc = classifier.accuracy_by_noise(clf, x, y, timesteps=(0, 99))
    assert acc[0] > 0.9


def test_classifier_bad_input():
    with pytest.raises(ValueError, match="needs images"):
        classifier.build(classifier.Config(), spec_for((2,), 3), {})
    with pytest.raises(ValueError, match="classes"):
        classifier.build(classifier.Config(), spec_for((1, 8, 8), 0), {})
    with pytest.raises(ValueError, match="cannot sample"):
        classifier.sample(_classifier(), 2)


# ------------------------------------------------------------------ the CLI


@pytest.fixture(scope="module")
def digits_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("cg")
    common = [*FAST_TRAIN, "train.steps=2", "model.timesteps=100"]
    unet = ["model.base_channels=8", "model.channel_mult=[1,2]", "model.attn_resolutions=[]"]
    assert run_cli("train", "ddpm", "--data", "digits", *unet, *common, "--out", root / "ddpm") == 0
    assert run_cli("train", "ddpm", "--data", "digits", "model.class_cond=true", "model.p_uncond=0.1", *unet, *common,
                   "--out", root / "cddpm") == 0
    assert run_cli("train", "classifier", "--data", "digits", "model.base_channels=8", "model.channel_mult=[1,2]",
                   *common, "--out", root / "clf") == 0
    assert run_cli("train", "classifier", "--data", "digits", "model.base_channels=8", "model.channel_mult=[1,2]",
                   *FAST_TRAIN, "train.steps=2", "--out", root / "clf-T1000") == 0
    return root


def test_cli_classifier_guidance(digits_runs, tmp_path, capsys):
    r = digits_runs
    for run in ("ddpm", "cddpm"):  # unconditional and class-conditional models are both guided
        out = tmp_path / f"{run}.png"
        assert run_cli("sample", r / run, "--n", "4", "--steps", "3", "--classifier", r / "clf", "--guidance", "2",
                       "--class", "3", "--out", out) == 0
        assert out.is_file()
    capsys.readouterr()
    assert run_cli("sample", r / "ddpm", "--n", "2", "--classifier", r / "clf", "--guidance", "2") == 2
    assert "--class" in capsys.readouterr().err
    assert run_cli("sample", r / "ddpm", "--n", "2", "--classifier", r / "cddpm", "--class", "1") == 2
    assert "'ddpm' run" in capsys.readouterr().err
    assert run_cli("sample", r / "ddpm", "--n", "2", "--classifier", r / "clf-T1000", "--class", "1") == 2
    assert "noise schedule" in capsys.readouterr().err
    assert run_cli("sample", r / "ddpm", "--n", "2", "--guidance", "2", "--class", "1") == 2  # CFG, unconditional run
    assert "class-conditional" in capsys.readouterr().err
