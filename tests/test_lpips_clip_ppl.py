"""LPIPS (generated weights), CLIP score (tiny encoders) and perceptual path length (closed forms)."""

import math
import sys

import numpy as np
import pytest
import torch

from genlab.data import to_float
from genlab.errors import GenlabError
from genlab.metrics.clip_score import clip_score, clip_score_from_embeddings, load_hf_clip
from genlab.metrics.evaluators import Evaluator
from genlab.metrics.lpips import LPIPS, DomainLPIPS, load_lpips
from genlab.metrics.ppl import (
    perceptual_path_length,
    ppl_distances,
    ppl_from_distances,
    sample_path_latents,
    slerp,
)


def rand_images(n, c=3, size=32, seed=0):
    return torch.rand(n, c, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


# ---------------------------------------------------------------------------------------------------------------
# LPIPS


def write_lpips_files(net, d, *, negative=False):
    """Backbone in torchvision's format (features.N.* plus a classifier) and linear layers in LPIPS's format."""
    torch.manual_seed(0)
    model = LPIPS(net)
    backbone = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("features.")}
    backbone["classifier.0.weight"] = torch.zeros(4, 4)  # a full torchvision file also holds the classifier
    linear = {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1) for i, c in enumerate([64, 192, 384, 256, 256]
                                                                                    if net == "alex" else [64, 128, 256, 512, 512])}  # fmt: skip
    if negative:
        linear["lin0.model.1.weight"][0, 0] = -1.0
    torch.save(backbone, d / f"{net}-backbone.pth")
    torch.save(linear, d / f"{net}-lin.pth")
    return d / f"{net}-backbone.pth", d / f"{net}-lin.pth", backbone, linear


@pytest.fixture(scope="module")
def alex(tmp_path_factory):
    b, lin, *_ = write_lpips_files("alex", tmp_path_factory.mktemp("lpips"))
    return load_lpips("alex", backbone_path=b, linear_path=lin)


def test_lpips_identity_symmetry_positivity(alex):
    x, y = rand_images(3, seed=0), rand_images(3, seed=1)
    with torch.no_grad():
        assert torch.equal(alex(x, x), torch.zeros(3))
        dxy, dyx = alex(x, y), alex(y, x)
        assert dxy.shape == (3,) and (dxy > 0).all()
        assert torch.allclose(dxy, dyx, rtol=1e-5)
        # a smaller perturbation gives a smaller distance
        assert (alex(x, (x + 0.01 * (y - x))) < dxy).all()


def test_lpips_matches_eq1_by_hand(alex):
    x, y = rand_images(2, seed=2), rand_images(2, seed=3)
    with torch.no_grad():
        f0, f1 = alex.layer_features(x), alex.layer_features(y)
        expected = sum((lin["model"][1].weight.view(1, -1, 1, 1) * (a - b) ** 2).sum(1).mean((1, 2))
                       for lin, a, b in zip(alex.lins, f0, f1))  # fmt: skip
        assert torch.allclose(alex(x, y), expected, rtol=1e-5)
        assert all(torch.allclose(f.norm(dim=1), torch.ones(()), atol=1e-4) for f in f0)  # unit-normalised


def test_lpips_input_range_and_formats(alex):
    x = rand_images(2)
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        alex((x + 1) * 127.5, x)  # [0, 255] floats
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        alex(x, x * 1.1)
    with torch.no_grad():
        alex(x.clamp(-1, 1) * (1 + 1e-6), x)  # round-off beyond the range is tolerated
        u = ((x + 1) * 127.5).round().to(torch.uint8)
        assert torch.allclose(alex(u, u.flip(0)), alex(to_float(u), to_float(u.flip(0))))
        assert torch.allclose(alex(x.double(), x.flip(0).double()), alex(x, x.flip(0)))  # float64 input is fine
        gray = x[:, :1]
        assert torch.allclose(alex(gray, gray.flip(0)), alex(gray.repeat(1, 3, 1, 1), gray.flip(0).repeat(1, 3, 1, 1)))
    with pytest.raises(ValueError, match="at least 31x31"):
        alex(rand_images(2, size=28), rand_images(2, size=28))
    with pytest.raises(ValueError, match="same shape"):
        alex(x, x[:1])


def test_lpips_vgg_loads_torchvision_keys(tmp_path):
    b, lin, backbone, linear = write_lpips_files("vgg", tmp_path)
    model = load_lpips("vgg", backbone_path=b, linear_path=lin)
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in backbone.items() if k.startswith("features."))
    assert torch.equal(state["lins.4.model.1.weight"], linear["lin4.model.1.weight"])
    assert sorted({int(k.split(".")[1]) for k in backbone if k.startswith("features.")}) == [
        0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]  # fmt: skip
    x = rand_images(2, size=16)
    with torch.no_grad():
        assert (model(x, x.flip(0)) > 0).all() and torch.equal(model(x, x), torch.zeros(2))


def test_lpips_loading_errors(tmp_path, monkeypatch):
    b, lin, backbone, _ = write_lpips_files("alex", tmp_path)
    monkeypatch.setenv("GENLAB_LPIPS_BACKBONE", str(tmp_path / "nope.pth"))
    with pytest.raises(GenlabError, match=r"backbone weights not found.*GENLAB_LPIPS_BACKBONE"):
        load_lpips("alex", linear_path=lin)
    with pytest.raises(GenlabError, match=r"linear weights not found.*GENLAB_LPIPS_LINEAR"):
        load_lpips("alex", backbone_path=b, linear_path=tmp_path / "nope.pth")
    _, neg, *_ = write_lpips_files("alex", tmp_path / "", negative=True)
    with pytest.raises(GenlabError, match="negative"):
        load_lpips("alex", backbone_path=b, linear_path=neg)
    del backbone["features.3.weight"]
    backbone["features.0.weight"] = torch.zeros(64, 3, 3, 3)
    torch.save(backbone, bad := tmp_path / "bad.pth")
    with pytest.raises(GenlabError, match=r"missing keys: features.3.weight.*features.0.weight: file \(64, 3, 3, 3\)"):
        load_lpips("alex", backbone_path=bad, linear_path=lin)
    with pytest.raises(GenlabError, match="unknown LPIPS backbone 'squeeze'"):
        load_lpips("squeeze")


def test_domain_lpips():
    torch.manual_seed(0)
    evaluator = Evaluator(1, 8, 10, widths=(8, 16), convs=(1, 1), feature_dim=16).eval()
    dist = DomainLPIPS(evaluator)
    x, y = rand_images(4, c=1, size=8, seed=0), rand_images(4, c=1, size=8, seed=1)
    with torch.no_grad():
        assert torch.equal(dist(x, x), torch.zeros(4))
        d = dist(x, y)
        assert ((d > 0) & (d <= 4)).all() and torch.allclose(d, dist(y, x), rtol=1e-5)
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        dist(x + 1, y)
    with pytest.raises(ValueError, match="channels"):
        dist(x.repeat(1, 3, 1, 1), y.repeat(1, 3, 1, 1))


# ---------------------------------------------------------------------------------------------------------------
# CLIP score


class TableEncoder:
    """Images embed as their flattened pixels; captions look up fixed vectors."""

    def __init__(self, table):
        self.table = table

    def encode_image(self, images):
        return to_float(images).flatten(1)

    def encode_text(self, texts):
        return torch.stack([self.table[t] for t in texts])


class TinyCLIP(torch.nn.Module):
    """A random-initialised image/text encoder pair with a shared 8-d embedding."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.image = torch.nn.Linear(3 * 4 * 4, 8)
        self.text = torch.nn.EmbeddingBag(128, 8)

    def encode_image(self, images):
        return self.image(to_float(images).flatten(1))

    def encode_text(self, texts):
        ids = [torch.tensor([ord(ch) % 128 for ch in t]) for t in texts]
        offsets = torch.tensor([0] + [len(i) for i in ids[:-1]]).cumsum(0)
        return self.text(torch.cat(ids), offsets)


def test_clip_score_formula_and_clamp():
    img = torch.tensor([[255, 0]], dtype=torch.uint8).view(1, 1, 1, 2).repeat(3, 1, 1, 1)  # embeds as (1, -1)
    table = {"same": torch.tensor([1.0, -1.0]), "orth": torch.tensor([1.0, 1.0]),
             "opposite": torch.tensor([-1.0, 1.0]), "half": torch.tensor([1.0, 0.0])}  # fmt: skip
    out = clip_score(TableEncoder(table), img, ["same", "opposite", "half"])
    np.testing.assert_allclose(out["per_image"], [2.5, 0.0, 2.5 / math.sqrt(2)], rtol=1e-12)
    assert out["clip_score"] == pytest.approx((2.5 + 2.5 / math.sqrt(2)) / 3)
    assert clip_score(TableEncoder(table), img[:1], ["orth"])["clip_score"] == pytest.approx(0.0, abs=1e-12)
    per = clip_score_from_embeddings(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.6, 0.8]]), w=100)
    assert per.dtype == torch.float64 and per.item() == pytest.approx(60.0)


def test_clip_score_tiny_encoder_batching_and_range():
    enc = TinyCLIP()
    x = torch.randint(0, 256, (10, 3, 4, 4), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    caps = [f"a photo of thing {i}" for i in range(10)]
    a, b = clip_score(enc, x, caps, batch_size=3), clip_score(enc, x, caps, batch_size=64)
    np.testing.assert_allclose(a["per_image"], b["per_image"], rtol=1e-6)
    assert ((a["per_image"] >= 0) & (a["per_image"] <= 2.5)).all()


def test_clip_score_shape_errors():
    enc = TinyCLIP()
    x = torch.zeros(2, 3, 4, 4, dtype=torch.uint8)
    with pytest.raises(ValueError, match="2 images but 1 captions"):
        clip_score(enc, x, ["one"])
    with pytest.raises(ValueError, match="uint8"):
        clip_score(enc, x.float(), ["a", "b"])
    with pytest.raises(ValueError, match="list of strings"):
        clip_score(enc, x, "ab")
    with pytest.raises(ValueError, match="must pair up"):
        clip_score_from_embeddings(torch.zeros(2, 8), torch.zeros(2, 4))
    bad = TableEncoder({"a": torch.zeros(3)})
    bad.encode_text = lambda texts: torch.ones(1, 48)
    with pytest.raises(ValueError, match="one row per input"):
        clip_score(bad, x, ["a", "b"])


def test_hf_clip_loader_errors(tmp_path, monkeypatch):
    with pytest.raises(GenlabError, match="CLIP checkpoint directory not found.*never downloads"):
        load_hf_clip(tmp_path / "missing")
    monkeypatch.setitem(sys.modules, "transformers", None)  # as if not installed
    with pytest.raises(GenlabError, match="needs the optional `transformers` package"):
        load_hf_clip(tmp_path)


# ---------------------------------------------------------------------------------------------------------------
# Perceptual path length


def sq_l2(a, b):
    return (a - b).pow(2).flatten(1).sum(1)


A = torch.tensor([[1.0, 2.0, 0.0], [0.0, -1.0, 0.5], [3.0, 0.0, 1.0], [0.5, 0.5, 0.5]], dtype=torch.float64)


def linear_generator(w):  # (B, 3) -> (B, 1, 2, 2); outside [-1, 1] is fine for a squared-L2 distance
    return (w @ A.T).view(-1, 1, 2, 2)


def test_ppl_w_space_linear_generator_closed_form():
    """lerp in W + linear G + squared L2: every path value is exactly ||A (w1 - w0)||^2, for any t."""
    for sampling in ("end", "full"):
        d = ppl_distances(linear_generator, sq_l2, n=400, latent_dim=3, space="w", mapping=lambda z: z,
                          sampling=sampling, generator=torch.Generator().manual_seed(7), dtype=torch.float64)  # fmt: skip
        z0, z1, _ = sample_path_latents(400, 3, sampling=sampling, generator=torch.Generator().manual_seed(7),
                                        dtype=torch.float64)  # fmt: skip
        expected = ((z1 - z0) @ A.T).pow(2).sum(1).numpy()
        np.testing.assert_allclose(d, expected, rtol=1e-6)
    # E ||A (w1 - w0)||^2 = 2 tr(A^T A) for w0, w1 ~ N(0, I)
    res = perceptual_path_length(linear_generator, sq_l2, n=4000, latent_dim=3, space="w", mapping=lambda z: z,
                                 generator=torch.Generator().manual_seed(0), dtype=torch.float64)  # fmt: skip
    assert res["distances"].mean() == pytest.approx(2 * (A**2).sum().item(), rel=0.05)
    assert res["n"] == 4000 and res["n_kept"] < 4000 and res["ppl"] < res["distances"].mean()


def test_ppl_z_space_slerp_closed_form():
    """slerp in Z + G(z) = c z + squared L2: c^2 (radial speed^2 + norm(t)^2 * angle^2)."""
    c = 0.5
    d = ppl_distances(lambda z: (c * z).view(-1, 1, 2, 4), sq_l2, n=200, latent_dim=8, sampling="full",
                      generator=torch.Generator().manual_seed(3), dtype=torch.float64)  # fmt: skip
    z0, z1, t = sample_path_latents(200, 8, sampling="full", generator=torch.Generator().manual_seed(3),
                                    dtype=torch.float64)  # fmt: skip
    n0, n1 = z0.norm(dim=1), z1.norm(dim=1)
    angle = torch.acos(((z0 / n0[:, None]) * (z1 / n1[:, None])).sum(1))
    norm_t = n0 + t[:, 0] * (n1 - n0)
    expected = c**2 * ((n1 - n0) ** 2 + norm_t**2 * angle**2)
    np.testing.assert_allclose(d, expected.numpy(), rtol=1e-3)


def test_slerp_endpoints_and_end_sampling():
    z0, z1, t = sample_path_latents(5, 4, sampling="end", generator=torch.Generator().manual_seed(0))
    assert torch.equal(t, torch.zeros(5, 1))
    assert torch.allclose(slerp(z0, z1, torch.zeros(5, 1)), z0, atol=1e-5)
    assert torch.allclose(slerp(z0, z1, torch.ones(5, 1)), z1, atol=1e-5)
    # same endpoints for both samplings; per-sample streams make results independent of batch size
    z0f, z1f, tf = sample_path_latents(5, 4, sampling="full", generator=torch.Generator().manual_seed(0))
    assert torch.equal(z0, z0f) and torch.equal(z1, z1f) and (tf > 0).all()
    kw = {"n": 13, "latent_dim": 8, "sampling": "full", "dtype": torch.float64}

    def gen(z):
        return torch.tanh(z).view(-1, 2, 2, 2)

    a = ppl_distances(gen, sq_l2, batch_size=4, generator=torch.Generator().manual_seed(1), **kw)
    b = ppl_distances(gen, sq_l2, batch_size=100, generator=torch.Generator().manual_seed(1), **kw)
    np.testing.assert_allclose(a, b, rtol=1e-12)


def test_ppl_filtering_matches_stylegan_percentiles():
    d = np.random.default_rng(0).permutation(np.arange(1, 1001, dtype=np.float64))  # 1..1000
    out = ppl_from_distances(d)
    # 1st percentile, rounded down to a sample: 10; 99th, rounded up: 991; both bounds kept
    assert out["n_kept"] == 982 and out["ppl"] == pytest.approx(np.arange(10, 992).mean())
    with pytest.raises(ValueError, match="finite"):
        ppl_from_distances([1.0, np.nan])


def test_ppl_refuses_uint8_images_and_bad_arguments():
    def quantized(z):
        return ((torch.tanh(z).view(-1, 1, 2, 2) + 1) * 127.5).round().to(torch.uint8)

    with pytest.raises(ValueError, match="un-quantized"):
        ppl_distances(quantized, sq_l2, n=4, latent_dim=4)
    with pytest.raises(ValueError, match="needs a mapping"):
        ppl_distances(linear_generator, sq_l2, n=4, latent_dim=3, space="w")
    with pytest.raises(ValueError, match="takes none"):
        ppl_distances(linear_generator, sq_l2, n=4, latent_dim=3, mapping=lambda z: z)
    with pytest.raises(ValueError, match="unknown path sampling 'middle'"):
        ppl_distances(linear_generator, sq_l2, n=4, latent_dim=3, sampling="middle")
    with pytest.raises(ValueError, match="one value per pair"):
        ppl_distances(lambda z: torch.tanh(z).view(-1, 1, 2, 2), lambda a, b: (a - b).sum(), n=4, latent_dim=4)


def test_ppl_with_domain_lpips():
    torch.manual_seed(0)
    evaluator = Evaluator(1, 8, 10, widths=(8, 16), convs=(1, 1), feature_dim=16).eval()
    proj = torch.randn(4, 64)
    res = perceptual_path_length(lambda z: torch.tanh(z @ proj).view(-1, 1, 8, 8), DomainLPIPS(evaluator), n=20,
                                 latent_dim=4, generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert np.isfinite(res["ppl"]) and res["ppl"] > 0 and res["distances"].shape == (20,)
