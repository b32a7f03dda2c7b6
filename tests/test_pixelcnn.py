"""PixelCNN: causal masks (grey, RGB channel order, code/point tokens) without a blind spot, exact NLL, the
sampler's distribution, class conditioning, and the prior over a trained VQ-VAE's codes end to end."""

import math

import pytest
import torch
from conftest import FAST_TRAIN, TINY_VAE, plain_step, run_cli, run_torchrun, spec_for

import genlab
from genlab.metrics.likelihood import bits_per_dim
from genlab.models import pixelcnn
from genlab.training.checkpoint import latest_checkpoint

TINY_VQVAE = ["model.channels=4", "model.code_dim=4", "model.codebook_size=16", "model.mlp_hidden=16"]
TINY = ["model.channels=8", "model.layers=2", "model.kernel=3", "model.embed_dim=4"]


def _model(shape=(1, 5, 5), num_classes=0, **kw):
    kw = {"channels": 12, "layers": 4, "kernel": 3, "embed_dim": 4, **kw}
    torch.manual_seed(0)
    return pixelcnn.build(pixelcnn.Config(**kw), spec_for(shape, num_classes), {})


@pytest.mark.parametrize("shape", [(1, 5, 5), (3, 4, 4)], ids=["grey", "rgb"])
def test_logits_depend_on_every_earlier_subpixel_and_on_nothing_later(shape):
    """d logits(i, j, c) / d x(i', j', c') is zero unless (i', j', c') < (i, j, c) in raster-then-channel order,
    and nonzero for every earlier one (no blind spot: 4 layers of kernel 3 cover a 5 x 5 image)."""
    C, H, W = shape
    net = _model(shape).net.double()
    xs = torch.rand(3, C, H, W, dtype=torch.float64) * 2 - 1  # several inputs: a ReLU may be off for one
    for i in range(H):
        for j in range(W):
            for c in range(C):
                x = xs.clone().requires_grad_(True)
                out = net(x)[:, :, c, i, j]  # (3, 256)
                (g,) = torch.autograd.grad((out * torch.randn_like(out)).sum(), x)
                reach = g.abs().sum(0)  # (C, H, W)
                for ii in range(H):
                    for jj in range(W):
                        for cc in range(C):
                            before = (ii, jj, cc) < (i, j, c)  # raster order, then channels
                            assert (reach[cc, ii, jj] > 0) == before, ((i, j, c), (ii, jj, cc), before)


def test_token_inputs_are_causal_too():
    """Points (and VQ-VAE codes) feed embedded tokens: changing token t or later leaves the logits at t alone."""
    model = _model((5,), point_bins=8).eval()
    v = torch.randint(0, 8, (1, 1, 1, 5))
    with torch.no_grad():
        base = model(v)
        for t in range(5):
            later, earlier = v.clone(), v.clone()
            later[..., t:] = (later[..., t:] + 3) % 8
            assert torch.equal(model(later)[..., t], base[..., t]), t
            if t > 0:
                earlier[..., t - 1] = (earlier[..., t - 1] + 3) % 8
                assert not torch.allclose(model(earlier)[..., t], base[..., t]), t


@pytest.mark.parametrize("layers,kernel", [(1, 3), (2, 5)])
def test_row_logits_from_the_rows_in_reach_equal_the_full_image(layers, kernel):
    """Sampling evaluates row i on the rows that reach it (the vertical stack's reach), not on the whole image."""
    model = _model((3, 12, 5), num_classes=2, class_cond=True, layers=layers, kernel=kernel).eval()
    v, y = torch.randint(0, 256, (2, 3, 12, 5)), torch.tensor([0, 1])
    with torch.no_grad():
        full = model(v, y)
        for i in range(12):
            assert torch.allclose(pixelcnn.row_logits(model, v, i, y), full[:, :, :, i], atol=1e-5), i


@pytest.mark.parametrize("shape", [(1, 4, 4), (3, 3, 3)], ids=["grey", "rgb"])
def test_exact_nll_is_the_sum_of_per_subpixel_cross_entropies(shape):
    model = _model(shape).eval()
    x = torch.randint(0, 256, (3, *shape)).float() / 127.5 - 1  # 8-bit images in [-1, 1]
    ll = pixelcnn.log_likelihood(model, x)
    levels = pixelcnn.to_levels(x)
    assert torch.equal(levels.float() / 127.5 - 1, x)
    logp = torch.log_softmax(model(levels).double(), dim=1)  # (B, 256, C, H, W)
    C, H, W = shape
    expected = torch.zeros(3, dtype=torch.float64)
    for b in range(3):
        for c in range(C):
            for i in range(H):
                for j in range(W):
                    expected[b] += logp[b, levels[b, c, i, j], c, i, j]
    assert torch.allclose(ll.double(), expected, rtol=1e-5)
    assert torch.allclose(pixelcnn.anomaly_score(model, x), -ll)


def test_zeroed_output_layer_is_the_uniform_model_at_8_bits_per_dim():
    model = _model((3, 4, 4))
    last = model.net.head[-1]
    torch.nn.init.zeros_(last.weight)
    torch.nn.init.zeros_(last.bias)
    x = torch.rand(5, 3, 4, 4) * 2 - 1
    ll = pixelcnn.log_likelihood(model, x)
    assert torch.allclose(ll, torch.full((5,), -48 * math.log(256)))
    assert torch.allclose(bits_per_dim(ll, 48), torch.full((5,), 8.0, dtype=torch.float64))


@pytest.mark.parametrize("shape", [(1, 4, 5), (3, 3, 3), (2,)], ids=["grey", "rgb", "points"])
def test_sample_shapes_values_seeding_and_batch_size_independence(shape):
    model = _model(shape)
    model.train()
    a = pixelcnn.sample(model, 5, generator=torch.Generator().manual_seed(1), batch_size=5)
    assert model.training  # restored after sampling
    b = pixelcnn.sample(model, 5, generator=torch.Generator().manual_seed(1), batch_size=2)
    c = pixelcnn.sample(model, 5, generator=torch.Generator().manual_seed(2))
    assert a.shape == (5, *shape) and torch.equal(a, b) and not torch.equal(a, c)
    if len(shape) == 3:
        assert a.min() >= -1 and a.max() <= 1
        assert torch.equal(pixelcnn.to_levels(a).float() / 127.5 - 1, a)  # on the 8-bit grid
    with pytest.raises(ValueError, match="unknown sampler 'ddim' for pixelcnn"):
        pixelcnn.sample(model, 2, sampler="ddim")
    with pytest.raises(ValueError, match="without class conditioning"):
        pixelcnn.sample(model, 2, cond={"y": torch.tensor([0, 1])})


def test_sampler_draws_from_the_softmax_and_uniformly_inside_point_bins():
    """With a zero network and a fixed output bias, every coordinate's bin ~ softmax(bias / temperature)."""
    model = _model((2,), point_bins=4, point_range=2.0)
    last = model.net.head[-1]
    torch.nn.init.zeros_(last.weight)
    probs = torch.tensor([0.1, 0.2, 0.3, 0.4])
    last.bias.data.copy_(probs.log())
    n = 4000
    for T in (1.0, 0.5):
        x = pixelcnn.sample(model, n, generator=torch.Generator().manual_seed(0), temperature=T)
        bins = pixelcnn.variables(model, x).reshape(n, 2)
        target = probs ** (1 / T) / (probs ** (1 / T)).sum()
        freq = torch.stack([torch.bincount(bins[:, d], minlength=4) / n for d in range(2)])
        assert (freq - target).abs().max() < 0.03, (T, freq)
    inside = x + 2.0 - bins.float()  # position inside the bin (width 1), uniform on [0, 1)
    assert inside.min() >= 0 and inside.max() < 1 and abs(inside.mean().item() - 0.5) < 0.02
    # the points' density: P(bins) / width^2, exactly
    ll = pixelcnn.log_likelihood(model, x[:3])
    assert torch.allclose(ll, probs[bins[:3]].log().sum(1), atol=1e-5)


def test_it_learns_a_dependency_between_variables_and_on_the_class():
    """Points whose second coordinate copies the first, one cluster per class: after a few hundred steps the
    samples copy too, and the class picks the cluster (ancestral sampling follows the conditionals)."""
    model = _model((2,), num_classes=2, point_bins=8, point_range=4.0, channels=16, layers=1, class_cond=True, lr=3e-3)
    opts = pixelcnn.make_optimizers(model, model.cfg)
    g = torch.Generator().manual_seed(0)
    for _ in range(150):
        y = torch.randint(0, 2, (64,), generator=g)
        b = torch.randint(0, 2, (64,), generator=g) + 4 * y  # bins 0-1 for class 0, 4-5 for class 1
        x = (b.float() - 4 + 0.5)[:, None].expand(64, 2)  # bin centres, both coordinates equal
        logs = plain_step(pixelcnn, model, {"x": x, "y": y}, opts)
    assert logs["loss"] < 0.4  # the optimum: log(2) / 2 nats per coordinate
    assert set(logs) == {"loss", "bits_per_coord"}
    y = torch.tensor([0] * 50 + [1] * 50)
    s = pixelcnn.sample(model, 100, cond={"y": y}, generator=torch.Generator().manual_seed(0))
    bins = pixelcnn.variables(model, s).reshape(100, 2)
    assert (bins[:, 0] == bins[:, 1]).float().mean() > 0.9
    assert ((bins[:, 0] // 4) == y).float().mean() > 0.9
    # likelihood: given the class, and marginal over a uniform class prior
    x = torch.tensor([[-3.5, -3.5], [1.5, -3.5]])
    ll0, ll1 = (pixelcnn.log_likelihood(model, x, y=torch.tensor([c, c])) for c in (0, 1))
    marginal = pixelcnn.log_likelihood(model, x)
    assert torch.allclose(marginal, torch.logaddexp(ll0, ll1) - math.log(2), atol=1e-5)
    assert ll0[0] > ll1[0] and ll0[0] > ll0[1]  # in-class and copied beats other class or not copied


def test_class_conditioning_needs_labels_and_changes_the_logits():
    model = _model((1, 4, 4), num_classes=3, class_cond=True).eval()
    assert pixelcnn.needs(model.cfg) == ("x", "y") and pixelcnn.needs(pixelcnn.Config()) == ("x",)
    v = torch.randint(0, 256, (2, 1, 4, 4))
    assert not torch.allclose(model(v, torch.tensor([0, 0])), model(v, torch.tensor([1, 1])))
    s = pixelcnn.sample(model, 3, cond={"y": torch.tensor([0, 1, 2])}, generator=torch.Generator().manual_seed(0))
    assert s.shape == (3, 1, 4, 4)
    with pytest.raises(ValueError, match="class labels must be in 0..2"):
        pixelcnn.sample(model, 1, cond={"y": torch.tensor([3])})


def test_bad_configs_are_clear_errors():
    with pytest.raises(ValueError, match="model.kernel must be odd and >= 3"):
        _model(kernel=4)
    with pytest.raises(ValueError, match="model.layers must be >= 1"):
        _model(layers=0)
    with pytest.raises(ValueError, match="multiple of the 3 colour channels"):
        _model((3, 4, 4), channels=8)


def test_code_prior_on_a_tiny_vqvae_run_end_to_end(tmp_path):
    vq_dir, out = tmp_path / "vq", tmp_path / "prior"
    assert run_cli("train", "vqvae", "--data", "digits", *TINY_VQVAE, *FAST_TRAIN, "train.steps=2", "--out", vq_dir) == 0
    assert run_cli("train", "pixelcnn", "--data", "digits", f"model.vqvae={vq_dir}", "model.class_cond=true", *TINY,
                   *FAST_TRAIN, "train.steps=2", "--out", out) == 0
    run, vq = genlab.load(out), genlab.load(vq_dir)
    model = run.model
    assert model.mode == "codes" and model.grid == [1, 2, 2] and model.levels == 16  # 8x8 digits -> 2x2 codes
    x = run.sample(4, seed=0, cond=torch.tensor([0, 1, 2, 3]))
    assert x.shape == (4, 1, 8, 8) and x.min() >= -1 and x.max() <= 1
    # two-stage sampling: the images are the VQ-VAE's decodings of codes drawn by the prior
    codes = pixelcnn.variables(model, x[:1])
    assert codes.shape == (1, 1, 2, 2) and codes.max() < 16
    # the VQ-VAE is a frozen dependency: stored once under RUN/deps/vqvae, in no checkpoint of the prior
    assert set(run.deps) == {"vqvae"} and (out / "deps" / "vqvae" / "checkpoints").is_dir()
    assert any(k.startswith("model/net.") for k in run.checkpoint.tensors)
    assert not any(k.startswith(("model/vqvae.", "ema/vqvae.")) for k in run.checkpoint.tensors)
    assert not any(p.requires_grad for p in model.vqvae.parameters())
    for k, v in vq.model.state_dict().items():
        assert torch.equal(model.vqvae.state_dict()[k], v), k
    # what the prior models: codes (exact log P of the code grid), no image likelihood
    data = torch.rand(3, 1, 8, 8) * 2 - 1
    lp = pixelcnn.log_prob(model, pixelcnn.variables(model, data), torch.tensor([0, 1, 2]))
    assert lp.shape == (3,) and (lp < 0).all()
    with pytest.raises(ValueError, match="models the codes, not the images"):
        pixelcnn.log_likelihood(model, data)
    assert run_cli("eval", out, "--metrics", "nll") == 2  # a clear usage error, not a crash


@pytest.mark.slow
def test_code_prior_two_processes_equal_one_process(tmp_path):
    """DDP with a frozen VQ-VAE inside the model: 2 processes x batch 4 == 1 process x batch 8 (gloo on CPU)."""
    vq_dir = tmp_path / "vq"
    assert run_cli("train", "vqvae", "--data", "digits", *TINY_VQVAE, *FAST_TRAIN, "train.steps=2", "--out", vq_dir) == 0
    common = ["--data", "digits", f"model.vqvae={vq_dir}", "model.class_cond=true", *TINY, *FAST_TRAIN,
              "train.steps=3", "train.ema_decay=0"]
    run_torchrun(tmp_path / "two", "pixelcnn", *common, "train.batch_size=4", port=29691)
    assert run_cli("train", "pixelcnn", *common, "train.batch_size=8", "--out", tmp_path / "one") == 0
    one, two = (latest_checkpoint(tmp_path / r / "checkpoints").tensors for r in ("one", "two"))
    keys = [k for k in one if k.startswith(("model/", "optim/"))]
    assert keys and set(keys) == {k for k in two if k.startswith(("model/", "optim/"))}
    for k in keys:
        assert torch.allclose(one[k], two[k], atol=1e-5, rtol=0), k
    # torchrun moves the model to "cpu:0", which replaces buffer tensors: the VQ-VAE's codebook must still be
    # recognised as frozen (not saved), so the run loads
    assert not any("vqvae" in k for k in two)
    assert genlab.load(tmp_path / "two").sample(2, seed=0).shape == (2, 1, 8, 8)


def test_vqvae_runs_of_another_data_shape_or_family_are_refused(tmp_path, capsys):
    vq_dir = tmp_path / "vq-points"
    assert run_cli("train", "vqvae", "--data", "ring8", *TINY_VQVAE, *FAST_TRAIN, "train.steps=2", "--out", vq_dir) == 0
    capsys.readouterr()
    assert run_cli("train", "pixelcnn", "--data", "digits", f"model.vqvae={vq_dir}", *TINY, "--out", tmp_path / "b") == 2
    assert "was trained on data of shape [2], not [1, 8, 8]" in capsys.readouterr().err
    # a VQ-VAE of points has one code per point: the prior is a (learned) categorical over the codebook
    out = tmp_path / "prior-points"
    assert run_cli("train", "pixelcnn", "--data", "ring8", f"model.vqvae={vq_dir}", *TINY, *FAST_TRAIN,
                   "train.steps=2", "--out", out) == 0
    assert genlab.load(out).sample(3, seed=0).shape == (3, 2)
    # model.vqvae must name a vqvae run: a VAE has no code indices
    vae_dir = tmp_path / "vae"
    assert run_cli("train", "vae", "--data", "digits", *TINY_VAE, *FAST_TRAIN, "train.steps=1", "--out", vae_dir) == 0
    capsys.readouterr()
    assert run_cli("train", "pixelcnn", "--data", "digits", f"model.vqvae={vae_dir}", *TINY, "--out", tmp_path / "c") == 2
    assert "is a 'vae' run; pixelcnn needs one of: vqvae" in capsys.readouterr().err
