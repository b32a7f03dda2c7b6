"""Per-family smoke tests: build, one train step, sample shape and range; plus family-specific maths."""

import math

import pytest
import torch
from conftest import PlainCtx

from genlab.models import FAMILIES, ddpm, vae

CASES = {
    "ddpm-image": (ddpm, dict(data_shape=[1, 8, 8], base_channels=8, channel_mult=[1, 2], num_res_blocks=1, attn_resolutions=[4], sample_steps=3)),
    "ddpm-image-v-cosine-cond": (ddpm, dict(data_shape=[3, 8, 8], base_channels=8, channel_mult=[1, 2], num_res_blocks=1,
                                            attn_resolutions=[], sample_steps=3, prediction="v", schedule="cosine",
                                            class_cond=True, num_classes=3, sampler="ddpm")),
    "ddpm-points": (ddpm, dict(data_shape=[2], mlp_hidden=16, sample_steps=3)),
    "vae-gaussian": (vae, dict(data_shape=[1, 8, 8], channels=8, latent_dim=3)),
    "vae-bernoulli-28": (vae, dict(data_shape=[1, 28, 28], channels=8, latent_dim=3, decoder="bernoulli")),
    "vae-points": (vae, dict(data_shape=[2], mlp_hidden=16, latent_dim=2)),
}


@pytest.mark.parametrize("case", CASES)
def test_smoke(case):
    family, kw = CASES[case]
    cfg = family.Config(**kw)
    torch.manual_seed(0)
    model = family.build(cfg)
    opts = family.make_optimizers(model, cfg)
    shape = cfg.data_shape
    x = torch.rand(6, *shape) * 2 - 1
    y = torch.randint(0, 3, (6,)) if getattr(cfg, "class_cond", False) else None
    before = [p.detach().clone() for p in model.parameters()]
    logs = family.train_step(model, (x, y), opts, PlainCtx(6))
    assert logs["loss"] == logs["loss"] and math.isfinite(logs["loss"])
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters())), "no parameter moved"
    cond = torch.tensor([0, 1, 2, 0, 1]) if y is not None else None
    s = family.sample(model, 5, cond=cond, generator=torch.Generator().manual_seed(0))
    assert s.shape == (5, *shape)
    if len(shape) == 3:
        assert s.min() >= -1 and s.max() <= 1


def test_every_family_follows_the_contract():
    for name, fam in FAMILIES.items():
        for attr in ("Config", "build", "make_optimizers", "train_step", "sample", "SAMPLERS"):
            assert hasattr(fam, attr), f"{name} lacks {attr}"
        cfg = fam.Config()  # every field has a default
        assert cfg.data_shape


@pytest.mark.parametrize("family", [ddpm, vae])
def test_sampling_is_seeded_and_batch_size_independent(family):
    cfg = family.Config(data_shape=[1, 8, 8], **({"base_channels": 8, "channel_mult": [1, 2], "num_res_blocks": 1,
                                                  "attn_resolutions": [], "sample_steps": 3, "sampler": "ddpm"}
                                                 if family is ddpm else {"channels": 8}))
    torch.manual_seed(0)
    model = family.build(cfg).eval()
    a = family.sample(model, 6, generator=torch.Generator().manual_seed(3), batch_size=6)
    b = family.sample(model, 6, generator=torch.Generator().manual_seed(3), batch_size=4)
    assert torch.allclose(a, b, atol=1e-5)
    c = family.sample(model, 6, generator=torch.Generator().manual_seed(4))
    assert not torch.allclose(a, c)


def test_ddpm_rejects_unknown_options():
    with pytest.raises(ValueError, match="unknown prediction 'x'"):
        ddpm.build(ddpm.Config(prediction="x"))
    model = ddpm.build(ddpm.Config(data_shape=[2], mlp_hidden=8))
    with pytest.raises(ValueError, match="unknown sampler 'euler'"):
        ddpm.sample(model, 2, sampler="euler")
    with pytest.raises(ValueError, match="without class conditioning"):
        ddpm.sample(model, 2, cond=torch.tensor([1, 2]))


def test_vae_kl_closed_form():
    mu, logvar = torch.tensor([[0.5, -1.0]]), torch.tensor([[math.log(0.25), 0.0]])
    # KL(N(m, s^2) || N(0, 1)) = 0.5 (m^2 + s^2 - 1 - ln s^2), summed
    expected = 0.5 * (0.25 + 0.25 - 1 - math.log(0.25)) + 0.5 * (1.0 + 1 - 1 - 0)
    assert vae.kl_standard_normal(mu, logvar).item() == pytest.approx(expected)


def test_iwae_bound_is_exact_for_a_linear_gaussian_model():
    """With a linear-Gaussian decoder and the exact posterior as encoder, every importance weight equals p(x)."""
    cfg = vae.Config(data_shape=[2], latent_dim=2, mlp_hidden=4)
    model = vae.build(cfg)
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
    cfg = vae.Config(data_shape=[1, 8, 8], channels=8, latent_dim=2)
    torch.manual_seed(0)
    model = vae.build(cfg)
    x = torch.rand(32, 1, 8, 8) * 2 - 1
    ll1 = vae.log_likelihood(model, x, k=1, generator=torch.Generator().manual_seed(0)).mean()
    ll64 = vae.log_likelihood(model, x, k=64, generator=torch.Generator().manual_seed(0)).mean()
    assert ll64 > ll1


def test_ddpm_denoising_strip_goes_from_noise_to_images():
    cfg = ddpm.Config(data_shape=[1, 8, 8], base_channels=8, channel_mult=[1, 2], num_res_blocks=1,
                      attn_resolutions=[], sample_steps=5)
    model = ddpm.build(cfg).eval()
    strip = ddpm.report_images(model, (torch.zeros(8, 1, 8, 8), None), torch.Generator().manual_seed(0))["denoising"]
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
