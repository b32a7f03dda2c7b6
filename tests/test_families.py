"""Per-family smoke tests: build, one train step, sample shape and range; plus family-specific maths."""

import dataclasses
import inspect
import math
import typing

import pytest
import torch
from conftest import plain_step, spec_for

from genlab.config import RunConfig, build_run_config, check
from genlab.errors import UsageError
from genlab.models import FAMILIES, ddpm, vae

CASES = {
    "ddpm-image": (ddpm, [1, 8, 8], 0, dict(base_channels=8, channel_mult=[1, 2], num_res_blocks=1, attn_resolutions=[4], sample_steps=3)),
    "ddpm-image-v-cosine-cond": (ddpm, [3, 8, 8], 3, dict(base_channels=8, channel_mult=[1, 2], num_res_blocks=1,
                                                          attn_resolutions=[], sample_steps=3, prediction="v",
                                                          schedule="cosine", class_cond=True, sampler="ddpm")),
    "ddpm-points": (ddpm, [2], 0, dict(mlp_hidden=16, sample_steps=3)),
    "vae-gaussian": (vae, [1, 8, 8], 0, dict(channels=8, latent_dim=3)),
    "vae-bernoulli-28": (vae, [1, 28, 28], 0, dict(channels=8, latent_dim=3, decoder="bernoulli")),
    "vae-points": (vae, [2], 0, dict(mlp_hidden=16, latent_dim=2)),
}


@pytest.mark.parametrize("case", CASES)
def test_smoke(case):
    family, shape, num_classes, kw = CASES[case]
    cfg = family.Config(**kw)
    torch.manual_seed(0)
    spec = spec_for(shape, num_classes)
    model = family.build(cfg, spec, {})
    assert model.data_shape == shape and model.spec == spec
    opts = family.make_optimizers(model, cfg)
    x = torch.rand(6, *shape) * 2 - 1
    batch = {"x": x}
    if getattr(cfg, "class_cond", False):
        batch["y"] = torch.randint(0, 3, (6,))
    before = [p.detach().clone() for p in model.parameters()]
    logs = plain_step(family, model, batch, opts)
    assert logs["loss"] == logs["loss"] and math.isfinite(logs["loss"])
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters())), "no parameter moved"
    cond = {"y": torch.tensor([0, 1, 2, 0, 1])} if "y" in batch else None
    s = family.sample(model, 5, cond=cond, generator=torch.Generator().manual_seed(0))
    assert s.shape == (5, *shape)
    if len(shape) == 3:
        assert s.min() >= -1 and s.max() <= 1


REQUIRED = ("build", "make_optimizers", "train_step", "sample", "needs")


@pytest.mark.parametrize("name", FAMILIES)
def test_every_family_follows_the_contract(name):
    """The family contract of genlab/models/__init__.py: the members, their signatures and the config rules."""
    fam = FAMILIES[name]
    for attr in ("Config", "SAMPLERS", "SAMPLE_OPTIONS", *REQUIRED):
        assert hasattr(fam, attr), f"{name} lacks {attr}"
    for attr in REQUIRED:
        assert callable(getattr(fam, attr)), f"{name}.{attr} is not callable"
    assert dataclasses.is_dataclass(fam.Config) and isinstance(fam.Config, type)
    cfg = fam.Config()  # every field has a default
    fields = {f.name for f in dataclasses.fields(fam.Config)}
    assert not fields & {"data_shape", "num_classes"}, f"{name}.Config still describes the data: {fields & {'data_shape', 'num_classes'}}"
    for f in dataclasses.fields(fam.Config):
        assert f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING, f"{name}.{f.name}"
    # choices are Literal fields, and the defaults are valid choices (check() accepts the default config)
    check(RunConfig(family=name, model=cfg))
    build_run_config(name, fam.Config, {})
    assert isinstance(fam.SAMPLERS, tuple) and all(isinstance(s, str) for s in fam.SAMPLERS)
    assert isinstance(fam.SAMPLE_OPTIONS, tuple) and all(isinstance(s, str) for s in fam.SAMPLE_OPTIONS)
    assert bool(fam.SAMPLERS) == ("sampler" in fam.SAMPLE_OPTIONS), f"{name}: SAMPLERS vs SAMPLE_OPTIONS"
    needs = fam.needs(cfg)
    assert isinstance(needs, tuple) and needs and needs[0] == "x", f"{name}.needs -> {needs!r}"
    assert list(inspect.signature(fam.build).parameters) == ["cfg", "spec", "deps"], name
    assert list(inspect.signature(fam.make_optimizers).parameters) == ["model", "cfg"], name
    assert list(inspect.signature(fam.train_step).parameters) == ["model", "batch", "opts", "ctx"], name
    sig = inspect.signature(fam.sample).parameters
    assert list(sig)[:2] == ["model", "n"], name
    for kw in ("cond", "generator"):
        assert kw in sig and sig[kw].kind is inspect.Parameter.KEYWORD_ONLY, f"{name}.sample lacks keyword {kw}"
    for opt in fam.SAMPLE_OPTIONS:
        assert opt in sig and sig[opt].kind is inspect.Parameter.KEYWORD_ONLY, f"{name}.sample lacks option {opt}"
    for dep in getattr(fam, "DEPS", ()):
        assert dep in fields, f"{name}.DEPS names {dep}, not a Config field"
    for mod in getattr(fam, "EMA_MODULES", ()) or ():
        assert isinstance(mod, str)


@pytest.mark.parametrize("name", FAMILIES)
def test_every_family_builds_from_a_spec_and_exposes_it(name):
    """build(cfg, spec, {}) with the default config: the model carries its spec and data shape. A family that
    cannot model 2-D points says so (ValueError) and builds for 32x32 images; a family whose config needs a run
    (a teacher, a first stage) says which field to set."""
    fam = FAMILIES[name]
    cfg = fam.Config()
    spec = spec_for([2], 3)
    try:
        model = fam.build(cfg, spec, {})
    except ValueError as points_error:
        required = [d for d in getattr(fam, "DEPS", ()) if not getattr(cfg, d)]
        if required:
            assert f"model.{required[0]}=" in str(points_error), (name, str(points_error))
            return
        spec = spec_for([1, 32, 32], 3)
        model = fam.build(cfg, spec, {})
    assert isinstance(model, torch.nn.Module)
    assert model.spec == spec and list(model.data_shape) == list(spec.shape), name
    assert isinstance(fam.make_optimizers(model, cfg), dict)


@pytest.mark.parametrize("family", [ddpm, vae])
def test_sampling_is_seeded_and_batch_size_independent(family):
    cfg = family.Config(**({"base_channels": 8, "channel_mult": [1, 2], "num_res_blocks": 1,
                            "attn_resolutions": [], "sample_steps": 3, "sampler": "ddpm"}
                           if family is ddpm else {"channels": 8}))
    torch.manual_seed(0)
    model = family.build(cfg, spec_for([1, 8, 8]), {}).eval()
    a = family.sample(model, 6, generator=torch.Generator().manual_seed(3), batch_size=6)
    b = family.sample(model, 6, generator=torch.Generator().manual_seed(3), batch_size=4)
    assert torch.allclose(a, b, atol=1e-5)
    c = family.sample(model, 6, generator=torch.Generator().manual_seed(4))
    assert not torch.allclose(a, c)


def test_ddpm_rejects_unknown_options():
    # choices are validated where configs are made (YAML / overrides), and by check() for Python-built ones
    with pytest.raises(UsageError, match="'model.prediction' expects one of: eps, v; got 'x'"):
        build_run_config("ddpm", ddpm.Config, {"model": {"prediction": "x"}})
    with pytest.raises(UsageError, match="'model.prediction' expects one of: eps, v; got 'x'"):
        check(RunConfig(family="ddpm", model=ddpm.Config(prediction="x")))
    with pytest.raises(UsageError, match="'model.sampler' expects one of: ddim, ddpm, euler, heun, dpmpp_2m; got 'plms'"):
        build_run_config("ddpm", ddpm.Config, {"model": {"sampler": "plms"}})
    from genlab.samplers import SAMPLERS

    assert set(ddpm.SAMPLERS) == set(SAMPLERS) == set(typing.get_args(typing.get_type_hints(ddpm.Config)["sampler"]))
    model = ddpm.build(ddpm.Config(mlp_hidden=8), spec_for([2]), {})
    with pytest.raises(ValueError, match="unknown sampler 'plms' for ddpm; expected one of: ddpm, ddim, euler, heun, dpmpp_2m"):
        ddpm.sample(model, 2, sampler="plms")
    with pytest.raises(ValueError, match="without class conditioning"):
        ddpm.sample(model, 2, cond=torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="without class conditioning"):
        ddpm.sample(model, 2, cond={"y": torch.tensor([1, 2])})


def test_vae_kl_closed_form():
    mu, logvar = torch.tensor([[0.5, -1.0]]), torch.tensor([[math.log(0.25), 0.0]])
    # KL(N(m, s^2) || N(0, 1)) = 0.5 (m^2 + s^2 - 1 - ln s^2), summed
    expected = 0.5 * (0.25 + 0.25 - 1 - math.log(0.25)) + 0.5 * (1.0 + 1 - 1 - 0)
    assert vae.kl_standard_normal(mu, logvar).item() == pytest.approx(expected)


def test_iwae_bound_is_exact_for_a_linear_gaussian_model():
    """With a linear-Gaussian decoder and the exact posterior as encoder, every importance weight equals p(x)."""
    cfg = vae.Config(latent_dim=2, mlp_hidden=4)
    model = vae.build(cfg, spec_for([2]), {})
    # p(z) = N(0, I), p(x|z) = N(z, s^2 I)  =>  p(x) = N(0, (1 + s^2) I), q(z|x) = N(x / (1 + s^2), s^2 / (1 + s^2))
    s = 0.5
    model.log_sigma.data.fill_(math.log(s))
    model.decode = lambda z: z
    model.encode = lambda x: (x / (1 + s**2), torch.full_like(x, math.log(s**2 / (1 + s**2))))
    x = torch.tensor([[0.3, -0.7], [1.2, 0.1]])
    exact = torch.distributions.Normal(0.0, math.sqrt(1 + s**2)).log_prob(x).sum(1)
    ll = vae.log_likelihood(model, x, k=8, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(ll, exact, atol=1e-4)


def test_iwae_tightens_with_k():
    cfg = vae.Config(channels=8, latent_dim=2)
    torch.manual_seed(0)
    model = vae.build(cfg, spec_for([1, 8, 8]), {})
    x = torch.rand(32, 1, 8, 8) * 2 - 1
    ll1 = vae.log_likelihood(model, x, k=1, generator=torch.Generator().manual_seed(0)).mean()
    ll64 = vae.log_likelihood(model, x, k=64, generator=torch.Generator().manual_seed(0)).mean()
    assert ll64 > ll1


def test_ddpm_denoising_strip_goes_from_noise_to_images():
    cfg = ddpm.Config(base_channels=8, channel_mult=[1, 2], num_res_blocks=1, attn_resolutions=[], sample_steps=5)
    model = ddpm.build(cfg, spec_for([1, 8, 8]), {}).eval()
    strip = ddpm.report_images(model, {"x": torch.zeros(8, 1, 8, 8)}, torch.Generator().manual_seed(0))["denoising"]
    assert strip.shape[:2] == (8, 6)  # x_T + one frame per step (at most 9 frames)
    assert 0.7 < strip[:, 0].std() < 1.3  # x_T is unit noise
    assert strip[:, -1].abs().max() <= 1  # the last frame is a clamped sample


def test_unet_attention_matches_naive_softmax_attention():
    from genlab.nn.unet import Attention

    torch.manual_seed(0)
    attn = Attention(16, heads=2)
    torch.nn.init.normal_(attn.out.weight)
    x = torch.randn(2, 16, 3, 4)
    h = attn.norm(x).flatten(2)  # (B, C, L)
    q, k, v = (attn.qkv.weight.flatten(1) @ h + attn.qkv.bias[:, None]).chunk(3, dim=1)  # each (B, C, L)
    out = []
    for head in range(2):
        sl = slice(8 * head, 8 * head + 8)
        w = torch.softmax(q[:, sl].transpose(1, 2) @ k[:, sl] / 8**0.5, dim=-1)  # (B, L, L)
        out.append(v[:, sl] @ w.transpose(1, 2))  # (B, c, L)
    expected = x + attn.out(torch.cat(out, 1).reshape(x.shape))
    assert torch.allclose(attn(x), expected, atol=1e-5)
