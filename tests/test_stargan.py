"""StarGAN (genlab/models/stargan.py): target-domain conditioning, which domain each classification loss
targets, reconstruction loss zero for an identity generator, D's two heads, evaluation conditions, bad input."""

import pytest
import torch
from conftest import plain_step

from genlab.data import DataSpec
from genlab.models import stargan as sg

SPEC = DataSpec("fmnist-color", (3, 32, 32), tuple(str(i) for i in range(10)), ("y", "color"))


def tiny(**kw) -> sg.Config:
    return sg.Config(**{"g_channels": 8, "g_blocks": 1, "d_channels": 8, "d_steps": 1, **kw})


def batch(n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"x": torch.rand(n, 3, 32, 32, generator=g) * 2 - 1, "color": torch.arange(n) % 8}


def test_changing_the_target_domain_changes_the_output():
    """The one-hot planes must reach G (an InstanceNorm right after the stem would erase them)."""
    torch.manual_seed(0)
    model = sg.build(tiny(), SPEC, {})
    x = batch(2)["x"]
    out = sg.translate(model, x)  # (B, K, C, H, W): every domain
    assert out.shape == (2, 8, 3, 32, 32)
    for k in range(1, 8):
        assert (out[:, k] - out[:, 0]).abs().max() > 1e-4, k
    blue = sg.translate(model, x, to="blue")
    assert torch.equal(blue[:, 0], out[:, 5]) and torch.equal(sg.translate(model, x, to="5"), blue)


def test_d_has_a_patch_source_head_and_a_domain_classifier():
    model = sg.build(tiny(d_layers=3), SPEC, {})
    src, cls = model["D"](batch()["x"])
    assert src.shape == (4, 1, 4, 4) and cls.shape == (4, 8)


def test_classification_losses_target_the_right_domains(monkeypatch):
    """D's L_cls^r uses each real image's own domain; G's L_cls^f uses the target G was asked for, and the
    reconstruction goes back to the original domain (Choi et al. 2018, Sec. 3)."""
    calls = []
    forward, cls_loss = sg.Generator.forward, sg.cls_loss

    def spy_forward(self, x, c, c_back=None):
        calls.append(("G", c.clone(), None if c_back is None else c_back.clone()))
        return forward(self, x, c, c_back)

    def spy_cls(logits, c):
        calls.append(("cls", c.clone()))
        return cls_loss(logits, c)

    monkeypatch.setattr(sg.Generator, "forward", spy_forward)
    monkeypatch.setattr(sg, "cls_loss", spy_cls)
    model = sg.build(tiny(), SPEC, {})
    b = {"x": batch(8)["x"], "color": torch.tensor([3, 3, 1, 0, 7, 2, 5, 6])}
    plain_step(sg, model, b, sg.make_optimizers(model, model.cfg))
    (g_d, _, no_back), (cls_d, c_real), (g_g, c_trg, c_back), (cls_g, c_fake) = calls
    assert (g_d, cls_d, g_g, cls_g) == ("G", "cls", "G", "cls") and no_back is None
    assert torch.equal(c_real, b["color"])  # D classifies real images as their own domain
    assert torch.equal(c_fake, c_trg)  # G is pushed towards the target it was given
    assert torch.equal(c_back, b["color"])  # the cycle returns to the original domain
    assert not torch.equal(c_trg, b["color"])  # random targets (8 draws: equal with probability 8^-8)


def test_cls_loss_is_low_for_the_right_domain_and_high_for_a_wrong_one():
    logits = torch.full((1, 8), -10.0)
    logits[0, 3] = 10.0
    assert sg.cls_loss(logits, torch.tensor([3])) < 1e-6 < 19 < sg.cls_loss(logits, torch.tensor([4]))


def test_reconstruction_loss_is_zero_for_an_identity_generator(monkeypatch):
    x = batch()["x"]
    assert sg.rec_loss(x, x) == 0 and sg.rec_loss(x, -x) > 0
    monkeypatch.setattr(sg.Generator, "forward", lambda self, x, c, c_back=None: x if c_back is None else (x, x))
    model = sg.build(tiny(), SPEC, {})
    opts = sg.make_optimizers(model, model.cfg)
    monkeypatch.setattr(opts["G"], "step", lambda: None)  # the identity has nothing to train
    logs = plain_step(sg, model, batch(), opts)
    assert logs["loss_rec"] == 0.0


@pytest.mark.parametrize("loss", ["wgan-gp", "lsgan", "nonsaturating"])
def test_adversarial_losses_prefer_real_high_fake_low(loss):
    hi, lo = torch.full((2, 1, 4, 4), 2.0), torch.full((2, 1, 4, 4), -2.0)
    assert sg.adv_d_loss(loss, hi, lo) < sg.adv_d_loss(loss, lo, hi)
    assert sg.adv_g_loss(loss, hi) < sg.adv_g_loss(loss, lo)


@pytest.mark.parametrize("loss", ["wgan-gp", "lsgan"])
def test_a_train_step_updates_both_networks(loss):
    model = sg.build(tiny(loss=loss, d_steps=2), SPEC, {})
    before = {k: p.detach().clone() for k, p in model.named_parameters()}
    logs = plain_step(sg, model, batch(), sg.make_optimizers(model, model.cfg))
    assert ("gp" in logs) == (loss == "wgan-gp")
    assert all(not torch.equal(before[k], p) for k, p in model.named_parameters())


def test_eval_conditions_ask_for_every_other_colour():
    class Test:  # a stand-in for the fmnist-color test Dataset
        extra = {"color": torch.tensor([0, 3, 7])}

        def __len__(self):
            return 3

        def batch(self, idx):
            return {"x": torch.zeros(len(idx), 3, 32, 32), "y": idx, "color": self.extra["color"][idx]}

    cond = sg.eval_conditions(Test(), 21)
    src = Test.extra["color"][torch.arange(21) % 3]
    assert cond["x_src"].shape == (21, 3, 32, 32) and (cond["color"] != src).all()
    assert set(cond["color"][::3].tolist()) == set(range(1, 8))  # image 0 (red) is sent to all 7 others


def test_bad_input_is_a_clear_error():
    model = sg.build(tiny(), SPEC, {})
    x = batch(2)["x"]
    with pytest.raises(ValueError, match="unknown domain 'magenta'; expected one of: red, orange"):
        sg.translate(model, x, to="magenta")
    with pytest.raises(ValueError, match="unknown domain '8'"):
        sg.translate(model, x, to=8)
    with pytest.raises(ValueError, match="deterministic"):
        sg.translate(model, x, n_outputs=3)
    with pytest.raises(ValueError, match="shape"):
        sg.translate(model, torch.zeros(2, 1, 32, 32))
    with pytest.raises(ValueError, match="x_src"):
        sg.sample(model, 2)
    with pytest.raises(ValueError, match="target domain"):
        sg.sample(model, 2, cond={"x_src": x})
    with pytest.raises(ValueError, match="0..7"):
        sg.sample(model, 2, cond={"x_src": x, "color": torch.tensor([0, 9])})
    with pytest.raises(ValueError, match="domain_names has 2 names"):
        sg.build(tiny(domain_names=["a", "b"]), SPEC, {})
    with pytest.raises(ValueError, match="has 8 color values but model.num_domains=2"):
        sg.build(tiny(num_domains=2, domain_names=["a", "b"]), SPEC, {})
    assert sg.parse_domain(model.cfg, "Blue") == 5 and sg.parse_domain(model.cfg, 2) == 2


def test_report_images_show_each_input_in_every_domain():
    model = sg.build(tiny(), SPEC, {})
    strip = sg.report_images(model, batch(3), torch.Generator().manual_seed(0))["translation"]
    assert strip.shape == (3, 9, 3, 32, 32)  # rows of input | 8 translations
    assert torch.equal(strip[:, 0], batch(3)["x"])


def test_translate_cli_end_to_end(tmp_path):
    """A tiny fmnist-color run, then `genlab translate --to blue` (one output) and without --to (all 8)."""
    from conftest import FAST_TRAIN, run_cli

    from genlab.data.png import load_png

    run = tmp_path / "run"
    tiny_args = ["model.g_channels=4", "model.g_blocks=1", "model.d_channels=4", "model.d_layers=2", "model.d_steps=1"]
    assert run_cli("train", "stargan", "--data", "fmnist-color", *tiny_args, *FAST_TRAIN, "train.steps=2",
                   "--out", run) == 0
    assert run_cli("translate", run, "--out", tmp_path / "blue", "--to", "blue", "--n", "3") == 0
    assert load_png(tmp_path / "blue" / "000002-out-0.png").shape == (3, 32, 32)
    assert not (tmp_path / "blue" / "000000-out-1.png").exists()
    assert run_cli("translate", run, "--out", tmp_path / "all", "--n", "2") == 0
    assert (tmp_path / "all" / "000001-out-7.png").exists()
    assert run_cli("translate", run, "--out", tmp_path / "bad", "--to", "magenta") == 2  # usage error
    assert run_cli("translate", run, "--out", tmp_path / "bad", "--n-outputs", "3") == 2
