"""Image-to-image translation: the shared networks (genlab/nn/translation.py), pix2pix, CycleGAN, `genlab translate`."""

import re

import pytest
import torch
from conftest import FAST_TRAIN, plain_step, run_cli
from torch import nn

from genlab.data import DataSpec
from genlab.models import cyclegan, pix2pix
from genlab.nn.translation import (
    ImagePool,
    PatchDiscriminator,
    ResnetGenerator,
    UNetGenerator,
    check_images,
    patch_grid,
    receptive_field,
)
from genlab.rng import SampleRNG

PAIRED = DataSpec("edges2fmnist", (1, 32, 32), tuple(str(i) for i in range(10)), ("y", "x_src"))
UNPAIRED = DataSpec("unpaired:sneaker,ankle-boot", (1, 32, 32), tuple(str(i) for i in range(10)), ("y", "domain"))


# ----------------------------------------------------------------------------- networks


def test_receptive_field_table_matches_the_paper_and_the_network():
    """1 (PixelGAN), 16, 34, 70 (pix2pix's default), 142, 286 (its ImageGAN on 256x256); and the field the
    network really has: the input pixels that move one output logit."""
    assert [receptive_field(n) for n in range(6)] == [1, 16, 34, 70, 142, 286]
    torch.manual_seed(0)
    for n_layers in range(3):
        D = PatchDiscriminator(1, base=4, n_layers=n_layers, norm="none")
        x = torch.randn(1, 1, 96, 96, requires_grad=True)
        out = D(x)
        assert out.shape[-1] == patch_grid(n_layers, 96)
        i = out.shape[-1] // 2
        (g,) = torch.autograd.grad(out[0, 0, i, i], x)
        rows = g[0, 0].abs().sum(1).nonzero().squeeze(1)
        assert rows.max() - rows.min() + 1 == receptive_field(n_layers)


def test_patch_discriminator_refuses_images_too_small_for_its_depth():
    with pytest.raises(ValueError, match="lower n_layers"):
        PatchDiscriminator(1, base=4, n_layers=3)(torch.zeros(1, 1, 16, 16))


@pytest.mark.parametrize("size", [28, 32])
@pytest.mark.parametrize("depth", [1, 3, 5])
def test_unet_keeps_the_image_size_and_takes_extra_planes(size, depth):
    G = UNetGenerator(1, 3, base=4, depth=depth, extra_channels=2)
    out = G(torch.randn(2, 1, size, size), torch.randn(2, 2))
    assert out.shape == (2, 3, size, size) and out.abs().max() <= 1
    with pytest.raises(ValueError, match="extra inputs"):
        G(torch.randn(2, 1, size, size))


def test_unet_dropout_noise_is_per_image_and_reproducible():
    torch.manual_seed(0)
    G = UNetGenerator(1, 1, base=4, depth=3, dropout=0.5)
    x = torch.randn(4, 1, 32, 32)
    assert torch.equal(G(x), G(x))  # no noise given: no dropout
    a = G(x, noise=SampleRNG([1, 2, 3, 4]))
    assert torch.equal(a, G(x, noise=SampleRNG([1, 2, 3, 4])))
    assert not torch.allclose(a, G(x, noise=SampleRNG([5, 6, 7, 8])))
    assert torch.allclose(a[2:], G(x[2:], noise=SampleRNG([3, 4])), atol=1e-6)  # independent of the batch


def test_resnet_generator_shapes():
    assert ResnetGenerator(1, 3, base=4, n_blocks=1, extra_channels=5)(torch.randn(2, 1, 28, 28), torch.randn(2, 5)).shape == (2, 3, 28, 28)
    with pytest.raises(ValueError, match="divisible by 4"):
        ResnetGenerator(1, 1, base=4, n_blocks=1)(torch.randn(1, 1, 30, 30))


def test_check_images_names_the_expected_shape():
    check_images(torch.zeros(2, 1, 32, 32), (1, 32, 32))
    with pytest.raises(ValueError, match=r"\(3, 32, 32\).*\(1, 32, 32\)"):
        check_images(torch.zeros(2, 3, 32, 32), (1, 32, 32))


# ----------------------------------------------------------------------------- image pool


def _fakes(b, start=0):
    return torch.arange(start, start + b, dtype=torch.float32)[:, None, None, None].expand(b, 1, 2, 2).clone()


def test_pool_of_size_zero_passes_images_through():
    pool = ImagePool(0, (1, 2, 2))
    x = _fakes(4)
    assert torch.equal(pool.query(x, SampleRNG(range(4))), x)


def test_pool_fills_then_mixes_history_half_the_time():
    torch.manual_seed(0)
    pool = ImagePool(8, (1, 2, 2))
    x = _fakes(4, 100)
    assert torch.equal(pool.query(x, SampleRNG(range(4))), x)  # empty slots: D sees the new images
    assert pool.filled.any() and set(pool.images[pool.filled, 0, 0, 0].tolist()) <= set(range(100, 104))
    for step in range(1, 30):  # fill it
        pool.query(_fakes(4, 100 * step), SampleRNG(range(4 * step, 4 * step + 4)))
    assert pool.filled.all()
    old = 0
    for step in range(30, 80):
        new = _fakes(4, 1000 * step)
        out = pool.query(new, SampleRNG(range(4 * step, 4 * step + 4)))
        old += (out[:, 0, 0, 0] != new[:, 0, 0, 0]).sum().item()
    assert 0.35 < old / 200 < 0.65  # about half are history once the pool is full


def test_pool_is_independent_of_the_order_of_the_batch():
    """The update is a function of the set of (image, draws): what makes 2 processes == 1 process."""
    a, b = ImagePool(5, (1, 2, 2)), ImagePool(5, (1, 2, 2))
    seeds = list(range(40))
    for step in range(5):
        x = _fakes(8, 10 * step)
        perm = torch.randperm(8)
        s = seeds[8 * step: 8 * step + 8]
        out_a = a.query(x, SampleRNG(s))
        out_b = b.query(x[perm], SampleRNG([s[i] for i in perm.tolist()]))
        assert torch.equal(out_a[perm], out_b)
        assert torch.equal(a.images, b.images) and torch.equal(a.filled, b.filled)


def test_pool_select_leaves_other_rows_alone_and_lives_in_the_state_dict():
    pool = ImagePool(4, (1, 2, 2))
    x = _fakes(6)
    select = torch.tensor([True, False, True, False, True, False])
    out = pool.query(x, SampleRNG(range(6)), select=select)
    assert torch.equal(out[~select], x[~select])
    assert set(pool.images[pool.filled, 0, 0, 0].tolist()) <= {0.0, 2.0, 4.0}
    sd = pool.state_dict()
    assert set(sd) == {"images", "filled"}
    other = ImagePool(4, (1, 2, 2))
    other.load_state_dict(sd)
    assert torch.equal(other.images, pool.images)


# ----------------------------------------------------------------------------- pix2pix


def test_pix2pix_loss_signs():
    high, low = torch.full((2, 1, 3, 3), 5.0), torch.full((2, 1, 3, 3), -5.0)
    for kind in ("nonsaturating", "lsgan"):
        assert pix2pix.d_loss(kind, high, low) < pix2pix.d_loss(kind, low, high)  # D right < D wrong
        assert pix2pix.g_gan_loss(kind, high) < pix2pix.g_gan_loss(kind, low)  # fooling D lowers G's loss
    # the paper halves D's objective: a D that cannot tell scores log 2 per term, halved twice -> log 2
    assert torch.isclose(pix2pix.d_loss("nonsaturating", torch.zeros(1), torch.zeros(1)), torch.log(torch.tensor(2.0)))


@pytest.mark.parametrize("loss,d_in", [("l1", None), ("gan", 1), ("cgan", 2), ("l1+gan", 1), ("l1+cgan", 2)])
def test_pix2pix_ablation_rows_build_the_right_discriminator(loss, d_in):
    m = pix2pix.build(pix2pix.Config(loss=loss, base=4, depth=2), PAIRED, {})
    if d_in is None:
        assert "D" not in m and set(pix2pix.make_optimizers(m, m.cfg)) == {"G"}
    else:
        assert m["D"].net[0].in_channels == d_in


def test_pix2pix_train_step_logs_every_network_and_l1_only_matches_its_gradient():
    torch.manual_seed(0)
    batch = {"x": torch.rand(4, 1, 32, 32) * 2 - 1, "x_src": torch.rand(4, 1, 32, 32).round() * 2 - 1}
    m = pix2pix.build(pix2pix.Config(base=4, depth=2), PAIRED, {})
    logs = plain_step(pix2pix, m, batch, pix2pix.make_optimizers(m, m.cfg))
    assert {"loss_d", "loss_g", "loss_g_gan", "l1"} <= set(logs)
    m = pix2pix.build(pix2pix.Config(loss="l1", base=4, depth=2, lambda_l1=100), PAIRED, {})
    l1 = (m["G"](batch["x_src"]) - batch["x"]).abs().mean().item()
    logs = plain_step(pix2pix, m, batch, pix2pix.make_optimizers(m, m.cfg))
    assert logs["l1"] == pytest.approx(l1, rel=1e-5) and logs["loss_g"] == pytest.approx(100 * l1, rel=1e-5)


def test_pix2pix_translate_and_bad_input():
    m = pix2pix.build(pix2pix.Config(base=4, depth=2, dropout=0.5), PAIRED, {})
    s = torch.rand(3, 1, 32, 32) * 2 - 1
    out = pix2pix.translate(m, s, n_outputs=2, generator=torch.Generator().manual_seed(0))
    assert out.shape == (3, 2, 1, 32, 32) and not torch.equal(out[:, 0], out[:, 1])  # dropout as noise
    with pytest.raises(ValueError, match="--to does not apply"):
        pix2pix.translate(m, s, to="B")
    with pytest.raises(ValueError, match=r"\(3, 32, 32\)"):
        pix2pix.translate(m, torch.zeros(1, 3, 32, 32))
    with pytest.raises(ValueError, match="deterministic"):
        pix2pix.translate(pix2pix.build(pix2pix.Config(base=4, depth=2), PAIRED, {}), s, n_outputs=2)
    with pytest.raises(ValueError, match="x_src"):
        pix2pix.sample(m, 2)
    with pytest.raises(ValueError, match="unknown model.loss"):
        pix2pix.build(pix2pix.Config(loss="l2"), PAIRED, {})


# ----------------------------------------------------------------------------- CycleGAN


class _Map(nn.Module):
    """x -> sign * x, with one unused-in-value parameter so the optimizer has something to step."""

    def __init__(self, sign: float):
        super().__init__()
        self.sign, self.p = sign, nn.Parameter(torch.zeros(()))

    def forward(self, x):
        return self.sign * x + 0 * self.p


def _unpaired_batch(b=6):
    torch.manual_seed(1)
    return {"x": torch.rand(b, 1, 32, 32) * 2 - 1, "domain": torch.tensor([0, 1] * (b // 2))}


@pytest.mark.parametrize("sign,identity_zero", [(1.0, True), (-1.0, False)])
def test_cycle_loss_is_zero_when_F_inverts_G(sign, identity_zero):
    """G = F = identity: cycle and identity losses 0; G = F = negation: F(G(x)) = x (cycle 0), G(b) != b."""
    m = cyclegan.build(cyclegan.Config(base=4, n_blocks=1, losses="full+identity", pool_size=2), UNPAIRED, {})
    m["G"], m["F"] = _Map(sign), _Map(sign)
    logs = plain_step(cyclegan, m, _unpaired_batch(), cyclegan.make_optimizers(m, m.cfg))
    assert logs["cycle_l1"] == 0.0
    assert (logs["identity_l1"] == 0.0) == identity_zero
    assert {"loss_g", "loss_g_adv", "loss_d", "loss_d_a", "loss_d_b"} <= set(logs)


def test_cyclegan_loss_signs_and_ablation_rows():
    high, low = torch.full((2, 1, 3, 3), 3.0), torch.full((2, 1, 3, 3), -3.0)
    for kind in ("lsgan", "nonsaturating"):
        assert (cyclegan.gan_real(kind, high) < cyclegan.gan_real(kind, low)).all()
        assert (cyclegan.gan_fake(kind, torch.zeros(2, 1, 3, 3)) < cyclegan.gan_fake(kind, high)).all()  # lsgan's 'fake' is 0
        assert cyclegan.gan_real(kind, high).shape == (2,)
    assert cyclegan.cycles(cyclegan.Config(losses="gan")) == (False, False)
    assert cyclegan.cycles(cyclegan.Config(losses="gan+forward")) == (True, False)
    assert cyclegan.cycles(cyclegan.Config(losses="full")) == (True, True)


def test_cyclegan_forward_cycle_row_trains_only_the_forward_cycle():
    """GAN + forward cycle: the loss has no term from B images' cycles (G(F(b)) vs b)."""
    m = cyclegan.build(cyclegan.Config(base=4, n_blocks=1, losses="gan+forward", lambda_cycle=10.0), UNPAIRED, {})
    m["G"], m["F"] = _Map(1.0), _Map(0.5)  # F(G(a)) = a / 2: a cycle error on both directions
    batch = _unpaired_batch()
    logs = plain_step(cyclegan, m, batch, cyclegan.make_optimizers(m, m.cfg))
    x, a = batch["x"], batch["domain"] == 0
    fwd = (0.5 * x[a] - x[a]).abs().flatten(1).mean(1).sum().item() / len(x)
    assert logs["loss_g"] - logs["loss_g_adv"] == pytest.approx(10 * fwd, rel=1e-4)


def test_cyclegan_domains_and_eval_conditions():
    m = cyclegan.build(cyclegan.Config(base=4, n_blocks=1), UNPAIRED, {})
    assert [cyclegan.target_domain(m.domains, t) for t in ("ankle-boot", "A", "0", "A->B", "B->A", 1)] == [1, 0, 0, 1, 0, 1]
    with pytest.raises(ValueError, match="expected one of: sneaker"):
        cyclegan.target_domain(m.domains, "zebra")
    from genlab.config import DataConfig, RunConfig
    from genlab.training.data import eval_conditions

    cfg = RunConfig(family="cyclegan", data=DataConfig(name="unpaired:sneaker,ankle-boot"))
    cond = eval_conditions(cfg, ("x", "domain"), 6)
    assert cond["domain"].tolist() == [1, 0, 1, 0, 1, 0]  # alternating sources, each to the other domain
    assert cond["y"].tolist() == [9, 7] * 3  # the target domain's class (ankle boot 9, sneaker 7)
    out = cyclegan.sample(m, 6, cond=cond)
    assert out.shape == (6, 1, 32, 32)
    with pytest.raises(ValueError, match="deterministic"):
        cyclegan.translate(m, cond["x_src"], n_outputs=3)


# ----------------------------------------------------------------------------- genlab translate


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("translate")
    assert run_cli("train", "pix2pix", "--data", "edges2fmnist", "model.base=4", "model.depth=2", "train.steps=2",
                   *FAST_TRAIN, "--out", root / "p") == 0
    assert run_cli("train", "cyclegan", "--data", "unpaired:sneaker,ankle-boot", "model.base=4", "model.n_blocks=1",
                   "train.steps=2", *FAST_TRAIN, "--out", root / "c") == 0
    assert run_cli("train", "gan", "--data", "ring8", "model.mlp_hidden=8", "train.steps=1", *FAST_TRAIN,
                   "--out", root / "g") == 0
    return root


def test_translate_writes_pngs_and_a_grid(tiny_runs, tmp_path):
    from genlab.data.png import load_png

    assert run_cli("translate", tiny_runs / "p", "--n", "3", "--out", tmp_path / "p") == 0
    names = sorted(p.name for p in (tmp_path / "p").iterdir())
    assert names == ["000000-input.png", "000000-out-0.png", "000000-target.png", "000001-input.png",
                     "000001-out-0.png", "000001-target.png", "000002-input.png", "000002-out-0.png",
                     "000002-target.png", "grid.png"]
    assert load_png(tmp_path / "p" / "000000-out-0.png").shape == (1, 32, 32)
    # CycleGAN from the dataset (source domain picked by --to), then from a folder of PNGs
    assert run_cli("translate", tiny_runs / "c", "--to", "sneaker", "--n", "2", "--out", tmp_path / "c") == 0
    assert not list((tmp_path / "c").glob("*target*"))
    src = tmp_path / "in"
    src.mkdir()
    for f in (tmp_path / "c").glob("*-input.png"):
        f.rename(src / f.name)
    assert run_cli("translate", tiny_runs / "c", src, "--to", "B->A", "--out", tmp_path / "c2") == 0
    assert len(list((tmp_path / "c2").glob("*-out-0.png"))) == 2


def test_translate_bad_input_is_a_usage_error(tiny_runs, tmp_path, capsys):
    cases = [
        (["translate", tiny_runs / "g", "--out", tmp_path / "x"], "does not translate"),
        (["translate", tiny_runs / "c", "--to", "zebra", "--out", tmp_path / "x"], "unknown domain 'zebra'"),
        (["translate", tiny_runs / "p", "--data", "fmnist-color", "--n", "2", "--out", tmp_path / "x"], r"\(3, 32, 32\)"),
        (["translate", tiny_runs / "p", tmp_path / "nothing", "--out", tmp_path / "x"], "not a folder"),
        (["translate", tiny_runs / "p", "--n-outputs", "2", "--out", tmp_path / "x"], "deterministic"),
    ]
    for args, msg in cases:
        assert run_cli(*args) == 2, args
        err = capsys.readouterr().err
        assert "Traceback" not in err
        assert re.search(msg, err), (msg, err)


# ----------------------------------------------------------------------------- genlab eval on translation runs


def test_crop_protocol_reads_the_padded_garment_as_fmnist_net_reads_the_original():
    import numpy as np

    from genlab.data import load_dataset
    from genlab.metrics.protocols import extract_features, get_protocol, protocol_for_dataset

    x = load_dataset("fashion-mnist", "test").x[:16]
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    p = get_protocol(protocol_for_dataset("unpaired:ankle-boot,sneaker"))
    assert (p.name, p.crop, p.extractor) == ("unpaired:ankle-boot,sneaker", 28, "fmnist-net")
    got, want = extract_features(padded, p.extractor, crop=p.crop), extract_features(x, "fmnist-net")
    np.testing.assert_array_equal(got["features"], want["features"])
    shifted = extract_features(torch.nn.functional.pad(x, (0, 4, 0, 4)), p.extractor, crop=p.crop)
    assert not np.array_equal(shifted["features"], want["features"])  # the crop is the centre, not a corner
    with pytest.raises(ValueError, match="cannot be centre-cropped"):
        extract_features(x[:, :, :20, :20], p.extractor, crop=28)


def test_eval_scores_translation_runs_under_their_datasets_protocols(tiny_runs, capsys):
    from genlab.metrics.protocols import get_protocol, protocol_for_dataset

    p = get_protocol(protocol_for_dataset("edges2fmnist"))  # pix2pix: outputs against the real targets
    assert (p.dataset, p.extractor, p.crop) == ("edges2fmnist", "fmnist-net", 28)
    assert get_protocol(protocol_for_dataset("edges2fmnist-color")).extractor == "fmnist-color-net"
    # end to end on the CycleGAN run (its reference splits are small: 2,000 test and 12,000 training images)
    assert run_cli("eval", tiny_runs / "c", "--n", "40", "--metrics", "fid,acc") == 0
    out = capsys.readouterr().out
    assert "protocol unpaired:sneaker,ankle-boot:" in out and "fmnist-net" in out, out
    assert (tiny_runs / "c" / "eval.jsonl").exists()


@pytest.mark.parametrize("norm", ["instance", "none"])
def test_resnet_generator_sees_constant_extra_planes_through_its_norm(norm):
    """A one-hot target broadcast over H x W is constant per plane: instance norm after the stem would remove it
    (the network would ignore the condition) without the injection after the norm."""
    torch.manual_seed(0)
    g = ResnetGenerator(1, 1, base=8, n_blocks=1, extra_channels=3, norm=norm)
    x = torch.randn(2, 1, 16, 16)
    a, b = g(x, torch.eye(3)[[0, 0]]), g(x, torch.eye(3)[[1, 1]])
    assert (a - b).abs().max() > 1e-3
    if norm == "instance":  # the failure the injection fixes: planes concatenated before the stem's norm vanish
        from torch import nn

        conv = nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(4, 8, 7), nn.InstanceNorm2d(8))
        one_hot = lambda k: torch.eye(3)[k].view(1, 3, 1, 1).expand(2, 3, 16, 16)  # noqa: E731
        torch.testing.assert_close(conv(torch.cat([x, one_hot(0)], 1)), conv(torch.cat([x, one_hot(1)], 1)),
                                   atol=1e-5, rtol=0)
