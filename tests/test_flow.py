"""Flow family (RealNVP / Glow): exact inverses, log-determinants against brute-force Jacobians, closed-form
likelihoods, actnorm initialisation, the LU 1x1 convolution, temperature sampling; plus the shared
dequantisation (genlab/dequantization.py) and how `genlab eval --metrics nll` reports exact values vs bounds."""

import ast
import json
import math
from pathlib import Path

import pytest
import torch
from conftest import FAST_TRAIN, TINY_VAE, plain_step, run_cli, spec_for

import genlab
import genlab.dequantization
from genlab.data import to_uint8
from genlab.dequantization import dequantize, discrete_log_likelihood, undequantize
from genlab.models import FAMILIES, flow
from genlab.rng import SampleRNG, derive_seed

ROOT = Path(__file__).resolve().parent.parent / "genlab"
TINY_FLOW = ["model.depth=1", "model.hidden=8", "model.num_scales=2"]


def _flow(shape, variant="glow", seed=0, randomize=0.2, dtype=torch.float64, **cfg):
    """A small flow; `randomize` (a std) perturbs every weight, so no coupling is the identity (a meaningful test)."""
    torch.manual_seed(seed)
    cfg = {"depth": 2, "hidden": 8, "mlp_hidden": 8, "point_layers": 4, **cfg}
    model = flow.build(flow.Config(variant=variant, **cfg), spec_for(shape), {}).to(dtype)
    if randomize:
        with torch.no_grad():
            for p in model.parameters():
                p.add_(randomize * torch.randn_like(p))
    return model


IMAGE_CASES = [("glow", (1, 8, 8), {"num_scales": 3}), ("realnvp", (1, 8, 8), {"num_scales": 2}),
               ("glow", (3, 4, 4), {"num_scales": 1}), ("realnvp", (1, 28, 28), {"num_scales": 2, "depth": 1})]


POINT_CASES = [("glow", (2,), {}), ("realnvp", (2,), {}), ("glow", (5,), {})]


@pytest.mark.parametrize("variant,shape,cfg", IMAGE_CASES + POINT_CASES)
def test_inverse_is_exact(variant, shape, cfg):
    model = _flow(shape, variant, dtype=torch.float32, randomize=0.05, **cfg)  # float32, as trained
    y = torch.rand(4, *shape) * 2 - 1
    z, logdet = model.transform(y)
    assert z.shape == (4, math.prod(shape)) and logdet.shape == (4,)
    assert (model.inverse(z) - y).abs().max() < 1e-5
    x = to_uint8(y).float() / 127.5 - 1 if len(shape) == 3 else y  # images on the 8-bit levels
    assert (flow.decode(model, flow.encode(model, x)) - x).abs().max() < 1e-5


@pytest.mark.parametrize("variant,shape,cfg", [("glow", (1, 4, 4), {"num_scales": 2}),
                                               ("realnvp", (1, 4, 4), {"num_scales": 1}),
                                               ("realnvp", (1, 4, 4), {"num_scales": 2}),
                                               ("glow", (2,), {}), ("realnvp", (3,), {})])
def test_log_determinant_matches_brute_force_jacobian(variant, shape, cfg):
    model = _flow(shape, variant, **cfg)  # float64: slogdet of a 16 x 16 Jacobian to ~1e-10
    y = torch.rand(1, *shape, dtype=torch.float64) * 2 - 1
    J = torch.autograd.functional.jacobian(lambda v: model.transform(v.reshape(1, *shape))[0][0], y.flatten())
    sign, logabsdet = torch.linalg.slogdet(J)
    assert sign != 0
    assert torch.allclose(model.transform(y)[1][0], logabsdet, atol=1e-8, rtol=0)


def test_identity_flow_gives_the_standard_normal_density_and_the_dequantisation_offset():
    """Zero-initialised couplings, identity actnorm, 1x1 convs that are rotations: log p(y) = log N(y; 0, I)."""
    for variant in ("glow", "realnvp"):
        model = _flow((1, 8, 8), variant, randomize=0, num_scales=2)
        y = torch.randn(6, 1, 8, 8, dtype=torch.float64)
        closed = -0.5 * (y.pow(2) + math.log(2 * math.pi)).flatten(1).sum(1)
        assert torch.allclose(model(y), closed, atol=1e-5, rtol=0)  # the rotations are orthogonal to float32 precision
        # the 8-bit likelihood: the same density at the dequantised image, plus D log(2/256)
        x = to_uint8(torch.rand(6, 1, 8, 8) * 2 - 1).double() / 127.5 - 1
        u = SampleRNG.from_generator(6, torch.Generator().manual_seed(3)).rand(1, 8, 8).double()  # the draws it makes
        yq = dequantize(x, u)
        expected = -0.5 * (yq.pow(2) + math.log(2 * math.pi)).flatten(1).sum(1) + 64 * math.log(2 / 256)
        got = flow.log_likelihood(model, x, generator=torch.Generator().manual_seed(3))
        assert torch.allclose(got, expected, atol=1e-5, rtol=0)


def test_a_gaussian_is_matched_exactly_by_actnorm_and_after_data_initialisation():
    mu, sigma = torch.tensor([1.0, -2.0], dtype=torch.float64), torch.tensor([0.5, 2.0], dtype=torch.float64)
    closed = lambda x: (-0.5 * ((x - mu) / sigma) ** 2 - sigma.log() - 0.5 * math.log(2 * math.pi)).sum(1)  # noqa: E731
    x = mu + sigma * torch.randn(20000, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    model = _flow((2,), "realnvp", randomize=0)
    with torch.no_grad():  # actnorm set by hand to (x - mu) / sigma; every coupling is still the identity
        model.layers[0].bias.copy_(-mu.reshape(1, 2, 1, 1))
        model.layers[0].log_scale.copy_(-sigma.log().reshape(1, 2, 1, 1))
    assert torch.allclose(model(x[:100]), closed(x[:100]), atol=1e-10, rtol=0)
    # data-dependent initialisation finds the same (up to the sample's mean and std)
    model = _flow((2,), "glow", randomize=0)
    assert not model.initialized
    flow.initialize(model, x)
    assert model.initialized
    assert (model(x).mean() - closed(x).mean()).abs() < 1e-3


def test_actnorm_initialisation_normalises_each_layers_input_and_the_first_step_only_initialises():
    model = _flow((1, 8, 8), "glow", randomize=0, dtype=torch.float32, num_scales=2)
    x = to_uint8(torch.rand(32, 1, 8, 8) ** 2 * 2 - 1).float() / 127.5 - 1
    acts = [m for m in model.modules() if isinstance(m, flow.ActNorm)]
    outputs = []
    hooks = [m.register_forward_hook(lambda mod, args, out: outputs.append(out[0])) for m in acts]
    opts = flow.make_optimizers(model, model.cfg)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ema = flow.build(model.cfg, model.spec, {})
    plain_step(flow, model, {"x": x}, opts, ema=ema)  # step 0: initialisation only
    for h in hooks:
        h.remove()
    assert len(outputs) >= len(acts) and model.initialized
    # every actnorm's output in the initialisation pass (the logged loss's pass follows): zero mean, unit variance
    for out in outputs[: len(acts)]:
        assert torch.allclose(out.mean((0, 2, 3)), torch.zeros(out.shape[1]), atol=1e-5)
        assert torch.allclose(out.std((0, 2, 3), unbiased=False), torch.ones(out.shape[1]), atol=1e-4)
    after = {k: v.clone() for k, v in model.state_dict().items()}
    changed = {k for k in after if not torch.equal(before[k], after[k])}
    assert changed and all(k.endswith(("bias", "log_scale", "initialized")) for k in changed)
    assert all(len(s) == 0 for s in opts["model"].state.values())  # no optimizer step on the init batch
    assert all(torch.equal(a, b) for a, b in zip(ema.state_dict().values(), after.values()))  # the EMA starts there
    # the next step trains and never re-initialises; a loaded model keeps its initialisation
    plain_step(flow, model, {"x": x.flip(0)}, opts)
    assert any(not torch.equal(after[k], v) for k, v in model.state_dict().items() if "net" in k)
    fresh = flow.build(model.cfg, model.spec, {})
    fresh.load_state_dict(model.state_dict())
    assert fresh.initialized


def test_lu_1x1_convolution_determinant_and_inverse():
    torch.manual_seed(0)
    conv = flow.InvConv1x1(6).double()
    with torch.no_grad():
        for p in conv.parameters():
            p.add_(0.3 * torch.randn_like(p))
    W = conv.weight()
    assert torch.allclose(torch.linalg.slogdet(W)[1], conv.log_s.sum(), atol=1e-10)
    assert torch.allclose(W.det().abs().log(), conv.log_s.sum(), atol=1e-8)
    x = torch.randn(2, 6, 3, 5, dtype=torch.float64)
    y, logdet = conv(x)
    assert torch.allclose(y, torch.einsum("oc,bchw->bohw", W, x), atol=1e-12)
    assert torch.allclose(logdet, 15 * torch.linalg.slogdet(W)[1].expand(2), atol=1e-9)
    assert torch.allclose(conv.inverse(y), x, atol=1e-10)


@pytest.mark.parametrize("shape", [(1, 8, 8), (2,)])
def test_sampling_shapes_temperature_and_batch_independence(shape):
    model = _flow(shape, "glow", dtype=torch.float32, num_scales=2)
    g = lambda s: torch.Generator().manual_seed(s)  # noqa: E731
    x = flow.sample(model, 7, generator=g(1))
    assert x.shape == (7, *shape) and torch.isfinite(x).all()
    if len(shape) == 3:
        assert x.min() >= -1 and x.max() <= 1
    assert torch.allclose(x, flow.sample(model, 7, generator=g(1), batch_size=3), atol=1e-6)  # a stream per sample
    # T = 0 decodes z = 0: the same output whatever the seed; smaller T, less spread
    t0 = flow.sample(model, 3, generator=g(1), temperature=0.0)
    assert torch.equal(t0, flow.sample(model, 3, generator=g(2), temperature=0.0)) and torch.equal(t0[0], t0[1])
    spread = [flow.sample(model, 400, generator=g(5), temperature=t).std(0).mean() for t in (0.3, 0.7, 1.0)]
    assert spread[0] < spread[1] < spread[2]
    for bad in ({"temperature": -1.0}, {"sampler": "ddim"}, {"cond": {"y": torch.zeros(2)}}):
        with pytest.raises(ValueError):
            flow.sample(model, 2, **bad)


def test_image_sizes_that_do_not_squeeze_are_a_clear_error():
    with pytest.raises(ValueError, match="between 1 and 2"):
        flow.build(flow.Config(num_scales=3), spec_for((1, 28, 28)), {})
    with pytest.raises(ValueError, match="odd size"):
        flow.build(flow.Config(num_scales=1), spec_for((1, 7, 7)), {})


def test_training_on_points_lowers_the_nll():
    torch.manual_seed(0)
    model = flow.build(flow.Config(mlp_hidden=32, point_layers=4, lr=3e-3), spec_for((2,)), {})
    opts = flow.make_optimizers(model, model.cfg)
    x = torch.randn(256, 2) * torch.tensor([0.3, 1.0]) + torch.tensor([0.0, 1.0])
    x[:, 1] = x[:, 1] + x[:, 0] ** 2 * 3  # a banana: not Gaussian
    losses = [plain_step(flow, model, {"x": x}, opts)["loss"] for _ in range(60)]
    assert losses[-1] < losses[1] - 0.1


# ---------------------------------------------------------------------------------------------- dequantisation


def test_dequantize_puts_each_level_in_its_own_bin_and_inverts():
    levels = torch.arange(256, dtype=torch.float64)
    x = levels / 127.5 - 1  # genlab.data.to_float of 0..255
    for u in (0.0, 0.5, 0.999):
        y = dequantize(x, u)
        assert torch.equal(((y + 1) * 128).floor(), levels)  # bin k = [2k/256 - 1, 2(k+1)/256 - 1)
        assert torch.allclose(undequantize(y, u), x, atol=1e-12)
    y = torch.rand(1000, dtype=torch.float64) * 2 - 1  # any point of bin k comes back as level k
    assert torch.equal(to_uint8(undequantize(y)).double(), ((y + 1) * 128).floor())
    assert discrete_log_likelihood(torch.tensor(1.0), 10) == pytest.approx(1 + 10 * math.log(2 / 256))


def _offset_constants(path: Path) -> list[str]:
    """Code (not prose) that rebuilds the 8-bit bin's log-volume: log(...) of 256 / 255 / 128, or 2 / 256."""
    bins = {256, 255, 128}
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        consts = {c.value for c in ast.walk(node) if isinstance(c, ast.Constant)}
        is_log = isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in ("log", "log2")
        bin_width = (isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div) and isinstance(node.left, ast.Constant)
                     and isinstance(node.right, ast.Constant) and node.right.value in bins)
        if (is_log and consts & bins) or bin_width:
            found.append(f"{path.name}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_the_discrete_likelihood_offset_lives_only_in_the_dequantization_leaf():
    shared = ROOT / "dequantization.py"
    assert _offset_constants(shared) == [] and "math.log(value_range / levels)" in shared.read_text()
    files = [p for p in ROOT.rglob("*.py") if p != shared]  # families, networks, metrics, everything else
    assert [hit for p in files for hit in _offset_constants(p)] == []
    from genlab.metrics import likelihood

    assert likelihood.dequantization_offset is genlab.dequantization.dequantization_offset  # one definition
    for name in ("vae", "gmm", "flow"):  # every family with an 8-bit likelihood uses the shared function
        assert "discrete_log_likelihood(" in (ROOT / "models" / f"{name}.py").read_text(), name


# ---------------------------------------------------------------------------------------------- evaluation


def test_every_likelihood_family_says_whether_it_is_exact_or_a_bound():
    for name, fam in FAMILIES.items():
        if hasattr(fam, "log_likelihood"):
            assert getattr(fam, "LIKELIHOOD", "exact") in ("exact", "bound"), name
    assert (flow.LIKELIHOOD, FAMILIES["gmm"].LIKELIHOOD, FAMILIES["vae"].LIKELIHOOD) == ("exact", "exact", "bound")


def test_eval_nll_reports_exact_likelihood_for_a_flow(tmp_path, capsys):
    from genlab.data import load_dataset

    out = tmp_path / "flow-digits"
    assert run_cli("train", "flow", "--data", "digits", *TINY_FLOW, *FAST_TRAIN, "train.steps=3", "--out", out) == 0
    capsys.readouterr()
    assert run_cli("eval", out, "--metrics", "nll", "--n", "16", "--json", tmp_path / "r.json") == 0
    printed = capsys.readouterr().out
    assert "bits_per_dim" in printed and "<=" not in printed
    r = json.loads((tmp_path / "r.json").read_text())["result"]
    assert r["nll_kind"] == "exact"
    run = genlab.load(out)
    test = load_dataset("digits", "test")
    x = test.get(torch.arange(len(test)))[0]  # one chunk of <= 500: generator seeded by (0, "nll", 0)
    ll = flow.log_likelihood(run.model, x, generator=torch.Generator().manual_seed(derive_seed(0, "nll", 0)))
    assert r["nll_nats"] == pytest.approx(-ll.double().mean().item(), rel=1e-6)


def test_eval_nll_marks_the_vae_bound(tmp_path, capsys):
    out = tmp_path / "vae-digits"
    assert run_cli("train", "vae", "--data", "digits", *TINY_VAE, *FAST_TRAIN, "train.steps=2", "--out", out) == 0
    capsys.readouterr()
    assert run_cli("eval", out, "--metrics", "nll", "--n", "16", "--json", tmp_path / "r.json") == 0
    assert "<=" in capsys.readouterr().out
    assert json.loads((tmp_path / "r.json").read_text())["result"]["nll_kind"] == "bound"


def test_eval_table_marks_likelihood_bounds(capsys):
    from genlab.cli import _print_table

    proto = {"n_fake": 10}
    _print_table([("flow", {"protocol": proto, "nll_nats": 100.0, "bits_per_dim": 2.5, "nll_kind": "exact"}),
                  ("vae", {"protocol": proto, "nll_nats": 120.0, "bits_per_dim": 3.0, "nll_kind": "bound"})])
    lines = capsys.readouterr().out.splitlines()
    assert "<=" not in lines[1] and lines[2].count("<=") == 2 and "upper bound" in lines[3]


def test_eval_nll_on_a_family_without_likelihood_is_a_usage_error(tmp_path, capsys):
    out = tmp_path / "ae-digits"
    assert run_cli("train", "ae", "--data", "digits", *TINY_VAE[:2], *FAST_TRAIN, "train.steps=2", "--out", out) == 0
    capsys.readouterr()
    assert run_cli("eval", out, "--metrics", "nll", "--n", "16") == 2
    err = capsys.readouterr().err
    assert "ae family has no likelihood" in err and "drop 'nll'" in err


def test_sample_cli_takes_a_temperature_and_refuses_it_where_it_means_nothing(tmp_path, capsys):
    from safetensors.torch import load_file

    out = tmp_path / "flow-ring"
    assert run_cli("train", "flow", "--data", "ring8", "model.mlp_hidden=16", "model.point_layers=2", *FAST_TRAIN,
                   "train.steps=3", "--out", out) == 0
    assert run_cli("sample", out, "--n", "6", "--temperature", "0", "--out", tmp_path / "t0") == 0
    pts = load_file(str(tmp_path / "t0.safetensors"))["points"]
    assert torch.allclose(pts, pts[:1].expand_as(pts))  # z = 0 for every sample: one point, f^-1(0)
    assert run_cli("sample", out, "--n", "6", "--temperature", "1", "--out", tmp_path / "t1") == 0
    assert not torch.allclose(load_file(str(tmp_path / "t1.safetensors"))["points"][0], pts[0])
    capsys.readouterr()
    gan = tmp_path / "gan"
    assert run_cli("train", "gan", "--data", "ring8", "model.mlp_hidden=16", *FAST_TRAIN, "train.steps=2", "--out", gan) == 0
    assert run_cli("sample", gan, "--n", "4", "--temperature", "0.7") == 2
    assert "takes no 'temperature' option" in capsys.readouterr().err
