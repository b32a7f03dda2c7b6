"""ldm: cross-attention masking, prompts, guidance, the latent scale, the frozen first stage, inpainting, layouts,
and bad input. Text runs use the `tiny` test encoder; the first stage is an untrained autoencoder-kl."""

from types import SimpleNamespace

import pytest
import torch
from conftest import FAST_TRAIN, run_cli

from genlab.data import DataSpec
from genlab.models import autoencoder_kl, ldm
from genlab.nn.unet import CrossAttention
from genlab.rng import SampleRNG
from genlab.samplers import SAMPLERS, VPDenoiser, discrete_sigmas
from genlab.training.context import StepContext

SHAPE = (3, 16, 16)
SPEC = DataSpec("toy-scenes", SHAPE, tuple(str(i) for i in range(10)),
                ("y", "color", "text", "boxes", "obj_classes", "obj_colors"))
# width 64: genlab.nn.unet puts 32 GroupNorm groups on 32 channels, one channel per group, which cancels the
# per-channel time/label shift of its ResBlocks; 64 channels keep 2 per group
TINY_UNET = {"base_channels": 64, "channel_mult": [1, 2], "attn_resolutions": [4, 2], "sample_steps": 3,
             "text_encoder": "tiny"}


def _first_stage(shape=SHAPE):
    torch.manual_seed(0)
    cfg = autoencoder_kl.Config(channels=8, downsample=4, latent_channels=3, perceptual="none")
    model = autoencoder_kl.build(cfg, DataSpec("toy", shape), {}).requires_grad_(False).eval()
    return SimpleNamespace(model=model, family=autoencoder_kl, spec=DataSpec("toy", shape), family_name="autoencoder-kl")


def _ldm(scale=2.0, **cfg):
    torch.manual_seed(0)
    m = ldm.build(ldm.Config(**{**TINY_UNET, **cfg}), SPEC, {"autoencoder": _first_stage()})
    m.latent_scale.fill_(scale)
    with torch.no_grad():  # a random (not zero-initialised) output layer, so conditions visibly matter
        for p in m.unet.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m.eval()


def _x(n=4):
    return torch.rand(n, *SHAPE) * 2 - 1


# ------------------------------------------------------------------------------------------ cross-attention


def test_cross_attention_shapes_and_padding_tokens_get_no_attention():
    torch.manual_seed(0)
    att = CrossAttention(16, context_dim=12, heads=4)
    torch.nn.init.normal_(att.out.weight)  # zero-initialised otherwise: the residual would hide everything
    x, ctx = torch.randn(2, 16, 4, 4), torch.randn(2, 5, 12)
    mask = torch.tensor([[True, True, True, False, False], [True] * 5])
    out = att(x, ctx, mask)
    assert out.shape == x.shape
    changed = ctx.clone()
    changed[0, 3:] = 100 * torch.randn(2, 12)  # only padding of sample 0 changes
    assert torch.allclose(att(x, changed, mask), out, atol=1e-6)
    assert not torch.allclose(att(x, changed, torch.ones_like(mask)), att(x, ctx, torch.ones_like(mask)))
    # the padded batch row equals the same caption alone, without padding
    alone = att(x[:1], ctx[:1, :3], mask[:1, :3])
    assert torch.allclose(alone, out[:1], atol=1e-5)


def test_text_embeddings_pad_with_masked_tokens():
    emb, mask = ldm.embed_text(ldm.Config(text_encoder="tiny"), ["a red bag", "a small blue sneaker at the top left"],
                               "cpu")
    assert emb.shape == (2, 9, 384) and mask.shape == (2, 9)
    assert mask[0].tolist() == [True] * 4 + [False] * 5 and mask[1].all()
    assert torch.equal(emb[0, 4:], torch.zeros(5, 384))


# ----------------------------------------------------------------------------------------------- prompts


def test_a_prompt_change_changes_the_output_for_the_same_seed():
    m = _ldm(cond="text")

    def draw(prompt, seed=0):
        return ldm.sample(m, 2, cond={"text": prompt}, generator=torch.Generator().manual_seed(seed))

    a = draw("a red bag at the top left")
    assert torch.equal(a, draw("a red bag at the top left"))
    assert (a - draw("a blue sneaker at the bottom right")).abs().max() > 1e-3
    assert (a - draw("a red bag at the top left", seed=1)).abs().max() > 1e-3


def test_batch_composition_does_not_change_a_captions_sample():
    """Captions of different lengths pad to the batch's longest; padding is masked, so each image is unchanged."""
    m = _ldm(cond="text")
    caps = ["a red bag", "a small blue sneaker at the top left and a green coat at the bottom right"]
    both = ldm.sample(m, 2, cond={"text": caps}, generator=torch.Generator().manual_seed(0))
    seeds = SampleRNG.from_generator(2, torch.Generator().manual_seed(0))
    one = SampleRNG([0])
    one.generators = seeds.generators[:1]
    # the same first image drawn alone: same per-image stream, no padding
    D = ldm.denoiser(m, 1.0, ldm.sample_conditions(m, {"text": caps[:1]}, 1))
    sig = discrete_sigmas(ldm.alpha_bar(m.cfg), m.cfg.sample_steps)
    z = one.randn(*m.latent_shape) * (1 + sig[0] ** 2).sqrt().item()
    c = ldm.sample_conditions(m, {"text": caps[:1]}, 1)
    alone = m.decode(SAMPLERS["ddim"](D, z, sig, cond=c, rng=one, eta=0.0)).clamp(-1, 1)
    assert torch.allclose(both[:1], alone, atol=1e-5)


# ---------------------------------------------------------------------------------------------- guidance


@pytest.mark.parametrize("cond, kw", [("class", {"y": torch.tensor([1, 2, 3])}),
                                      ("text", {"text": ["a red bag", "a coat", "a blue sneaker at the top"]})])
def test_guidance_one_equals_the_conditional_sample_and_zero_the_unconditional(cond, kw):
    m = _ldm(cond=cond)
    c = ldm.sample_conditions(m, kw, 3)
    sig = discrete_sigmas(ldm.alpha_bar(m.cfg), 3)

    def by_hand(keywords):  # the plain denoiser (no CFG wrapper), DDIM, decode
        r = SampleRNG.from_generator(3, torch.Generator().manual_seed(0))
        z = r.randn(*m.latent_shape) * (1 + sig[0] ** 2).sqrt().item()
        D = VPDenoiser(m, ldm.alpha_bar(m.cfg), "eps")
        return m.decode(SAMPLERS["ddim"](D, z, sig, cond=keywords, rng=r, eta=0.0)).clamp(-1, 1)

    def draw(s):
        return ldm.sample(m, 3, cond=kw, generator=torch.Generator().manual_seed(0), steps=3, guidance=s)

    assert torch.allclose(draw(1.0), by_hand(c), atol=1e-6)
    null = {k: v.expand(3, *v.shape[1:]) for k, v in ldm.null_conditions(m, c).items()}  # batch 1 -> 3
    assert torch.allclose(draw(0.0), by_hand(null), atol=1e-5)
    z = torch.randn(3, *m.latent_shape)
    d1, d3 = ldm.denoiser(m, 1.0, c)(z, 2.0, c), ldm.denoiser(m, 3.0, c)(z, 2.0, c)
    assert (d3 - d1).abs().max() > 1e-3  # guidance moves the latent estimate


def test_guidance_needs_a_conditional_run_trained_with_dropout():
    with pytest.raises(ValueError, match="conditional run"):
        ldm.sample(_ldm(), 2, guidance=2.0)
    with pytest.raises(ValueError, match="p_uncond=0"):
        ldm.sample(_ldm(cond="class", p_uncond=0.0), 2, cond={"y": torch.tensor([1, 2])}, guidance=2.0)


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_every_sampler_runs_on_the_latents(sampler):
    m = _ldm(cond="class")
    x = ldm.sample(m, 2, cond={"y": torch.tensor([0, 5])}, sampler=sampler, steps=3, guidance=2.0,
                   sigmas="karras" if sampler in ("heun", "dpmpp_2m") else "uniform",
                   generator=torch.Generator().manual_seed(0))
    assert x.shape == (2, *SHAPE) and torch.isfinite(x).all() and x.abs().max() <= 1


# ------------------------------------------------------------------------------------ latent scale, training


def _train_step(m, batch, step=0):
    opts = ldm.make_optimizers(m, m.cfg)
    ctx = StepContext(m, opts, batch, SampleRNG(range(len(batch["x"]))), step=step)
    return ldm.train_step(m, batch, opts, ctx)


def test_latent_scale_is_measured_once_to_unit_variance():
    m = _ldm(scale=0.0, cond="class", use_color=True)
    x = _x(8)
    batch = {"x": x, "y": torch.arange(8) % 10, "color": torch.arange(8) % 8}
    _train_step(m.train(), batch)
    s = float(m.latent_scale)
    assert s > 0 and abs(m.encode(x).std().item() - 1) < 1e-4
    _train_step(m, {**batch, "x": 0.1 * x}, step=1)  # another batch later: the scale stays
    assert float(m.latent_scale) == s


def test_first_stage_is_frozen_and_not_in_the_ldm_checkpoint(tmp_path):
    from genlab.training.checkpoint import latest_checkpoint
    from genlab.training.run import load_run

    ae_args = ["model.channels=4", "model.downsample=2", "model.latent_channels=2", "model.disc_start=1"]
    assert run_cli("train", "autoencoder-kl", "--data", "digits", *ae_args, *FAST_TRAIN, "train.steps=2",
                   "--out", tmp_path / "ae") == 0
    assert run_cli("train", "ldm", "--data", "digits", "model.cond=class", "model.base_channels=8",
                   "model.channel_mult=[1]", "model.attn_resolutions=[4]", "model.sample_steps=2",
                   f"model.autoencoder={tmp_path / 'ae'}", *FAST_TRAIN, "train.steps=3", "--out", tmp_path / "ldm") == 0
    ckpt = latest_checkpoint(tmp_path / "ldm" / "checkpoints")
    assert not [k for k in ckpt.tensors if "first_stage" in k]
    assert "model/latent_scale" in ckpt.tensors and float(ckpt.tensors["model/latent_scale"]) > 0
    ae, run = load_run(tmp_path / "ae"), load_run(tmp_path / "ldm")
    assert not any(p.requires_grad for p in run.model.first_stage.parameters())
    for (k, a), b in zip(ae.model.state_dict().items(), run.model.first_stage.state_dict().values()):
        assert torch.equal(a, b), k  # 3 ldm steps did not move the first stage
    x = run.sample(4, seed=0, cond={"y": torch.tensor([1, 2, 3, 4])})
    assert x.shape == (4, 1, 8, 8)


# -------------------------------------------------------------------------------------------- inpainting


def test_inpainting_keeps_the_unmasked_pixels_exactly():
    m = _ldm(cond="text", inpaint=True)
    image = _x(2)
    mask = torch.zeros(2, 1, 16, 16)
    mask[:, :, 4:12, 2:10] = 1
    out = ldm.sample(m, 2, cond={"text": "a red bag", "x_src": image, "inpaint_mask": mask},
                     generator=torch.Generator().manual_seed(0))
    keep = (mask == 0).expand_as(image)
    assert torch.equal(out[keep], image.clamp(-1, 1)[keep])
    assert (out[~keep] - image[~keep]).abs().max() > 1e-3  # the hole is generated, not copied
    full = ldm.sample(m, 2, cond={"text": "a red bag"}, generator=torch.Generator().manual_seed(0))  # no mask: all
    assert full.shape == (2, *SHAPE)


def test_inpainting_input_starts_as_the_plain_model_and_training_masks_cover_the_image_sometimes():
    m = _ldm(inpaint=True)
    z = torch.randn(2, *m.latent_shape)
    concat = torch.randn(2, m.latent_shape[0] + 1, *m.latent_shape[1:])
    assert torch.allclose(m.in_proj(torch.cat([z, concat], 1)), z, atol=1e-6)
    masks = ldm.random_masks(SampleRNG(range(200)), list(SHAPE), "cpu")
    frac = masks.flatten(1).mean(1)
    assert masks.shape == (200, 1, 16, 16) and ((frac == 1).float().mean() > 0.1) and (frac < 1).any()


# ---------------------------------------------------------------------------------------------- layouts


def test_layout_tokens_mask_padding_and_keep_a_null_token():
    lt = ldm.LayoutTokens(10, 8, 32)
    boxes = torch.tensor([[[0.1, 0.1, 0.4, 0.4], [-1, -1, -1, -1]], [[-1, -1, -1, -1]] * 2])
    classes = torch.tensor([[3, -1], [-1, -1]])
    tokens, mask = lt(boxes, classes, torch.tensor([[2, -1], [-1, -1]]))
    assert tokens.shape == (2, 3, 32) and mask.tolist() == [[True, True, False], [True, False, False]]
    m = _ldm(cond="layout", use_color=True)
    x = ldm.sample(m, 2, cond={"boxes": boxes, "obj_classes": classes, "obj_colors": torch.tensor([[2, -1], [-1, -1]])},
                   guidance=2.0, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(x).all()


# --------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("cfg, cond, msg", [
    ({"cond": "class"}, {"text": ["a red bag"]}, "a prompt was given, but this run is conditioned on class"),
    ({"cond": "layout"}, {"text": ["a red bag"] * 2}, "conditioned on layouts"),
    ({"cond": "text"}, {"text": ["a red bag", "  "]}, "a prompt is empty"),
    ({"cond": "text"}, None, "pass --prompt"),
    ({"cond": "text"}, {"text": ["a", "b", "c"]}, "3 prompts for 2 samples"),
    ({"cond": "text", "inpaint": True}, {"text": "a bag", "x_src": torch.zeros(1, *SHAPE),
                                         "inpaint_mask": torch.ones(1, 1, 8, 8)}, "mask must be 16x16"),
    ({"cond": "text", "inpaint": True}, {"text": "a bag", "x_src": torch.zeros(1, 3, 8, 8),
                                         "inpaint_mask": torch.ones(1, 1, 16, 16)}, "image to inpaint must be"),
    ({"cond": "text"}, {"text": "a bag", "x_src": torch.zeros(1, *SHAPE), "inpaint_mask": torch.ones(1, 1, 16, 16)},
     "inpainting run"),
    ({"cond": "layout"}, {"boxes": torch.tensor([[[0.5, 0.5, 1.2, 0.9]]] * 2), "obj_classes": torch.tensor([[1]] * 2)},
     "outside the canvas"),
    ({"cond": "layout"}, {"boxes": torch.tensor([[[0.5, 0.5, 0.4, 0.9]]] * 2), "obj_classes": torch.tensor([[1]] * 2)},
     "box is empty"),
    ({"cond": "class"}, {"y": torch.tensor([1, 10])}, "class labels must be"),
    ({"cond": "text"}, {"y": torch.tensor([1, 2])}, "pass --prompt"),
])
def test_bad_conditions_are_clear_errors(cfg, cond, msg):
    with pytest.raises(ValueError, match=msg):
        ldm.sample(_ldm(**cfg), 2, cond=cond)


def test_first_stage_errors():
    with pytest.raises(ValueError, match="model.autoencoder=RUN"):
        ldm.build(ldm.Config(), SPEC, {})
    with pytest.raises(ValueError, match=r"trained on data of shape \[3, 32, 32\]"):
        ldm.build(ldm.Config(**TINY_UNET), SPEC, {"autoencoder": _first_stage((3, 32, 32))})


# -------------------------------------------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Tiny trained runs: first stages on digits and 16x16 scenes; class, text (+ inpainting) and layout ldm runs."""
    root = tmp_path_factory.mktemp("ldm-cli")
    fast = [*FAST_TRAIN, "train.steps=2", "train.batch_size=4", "train.n_samples=4"]
    ae = ["model.channels=4", "model.downsample=2", "model.latent_channels=2", "model.perceptual=none"]
    unet = ["model.base_channels=8", "model.channel_mult=[1]", "model.attn_resolutions=[4,8]", "model.sample_steps=2"]
    scenes = ["--data", "scenes", "data.image_size=16"]
    assert run_cli("train", "autoencoder-kl", "--data", "digits", *ae, *fast, "--out", root / "ae-digits") == 0
    assert run_cli("train", "autoencoder-kl", *scenes, *ae, *fast, "--out", root / "ae-scenes") == 0
    assert run_cli("train", "ldm", "--data", "digits", "model.cond=class", *unet, *fast,
                   f"model.autoencoder={root / 'ae-digits'}", "--out", root / "class") == 0
    assert run_cli("train", "ldm", *scenes, "model.cond=text", "model.text_encoder=tiny", "model.inpaint=true", *unet,
                   *fast, f"model.autoencoder={root / 'ae-scenes'}", "--out", root / "text") == 0
    assert run_cli("train", "ldm", *scenes, "model.cond=layout", "model.use_color=true", *unet, *fast,
                   f"model.autoencoder={root / 'ae-scenes'}", "--out", root / "layout") == 0
    return root


def _png(path, array):
    import numpy as np
    from PIL import Image

    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(path)
    return path


def test_cli_prompts_inpainting_and_layouts(runs, tmp_path):
    from genlab.data.png import load_png

    common = ["--steps", "2", "--seed", "3"]
    assert run_cli("sample", runs / "text", "--prompt", "a red sneaker at the top left", "--n", "3", *common,
                   "--out", tmp_path / "p.png") == 0
    (tmp_path / "prompts.txt").write_text("a red bag\n\na blue coat at the bottom right\n")
    assert run_cli("sample", runs / "text", "--prompts", tmp_path / "prompts.txt", "--guidance", "2", *common,
                   "--out", tmp_path / "many") == 0
    assert len(list((tmp_path / "many").glob("*.png"))) == 2  # one image per prompt
    image = _png(tmp_path / "img.png", torch.randint(0, 256, (16, 16, 3)))
    mask = torch.zeros(16, 16)
    mask[4:12, 4:12] = 255
    assert run_cli("sample", runs / "text", "--prompt", "a bag", "--image", image, "--mask",
                   _png(tmp_path / "mask.png", mask), "--n", "2", *common, "--out", tmp_path / "filled") == 0
    out, src = load_png(tmp_path / "filled" / "000000.png"), load_png(image)
    keep = (mask == 0).expand(3, -1, -1)
    assert torch.equal(out[keep], src[keep])  # the unmasked pixels, as saved
    layout = '[{"box": [0.05, 0.05, 0.45, 0.45], "class": "sneaker", "color": "red"}]'
    assert run_cli("sample", runs / "layout", "--layout", layout, "--n", "2", *common, "--out", tmp_path / "l.png") == 0


@pytest.mark.parametrize("which, args, msg", [
    ("class", ["--prompt", "a bag"], "--prompt needs a text-conditional run"),
    ("text", ["--prompt", " "], "a prompt is empty"),
    ("text", ["--prompt", "a bag", "--image", "IMG", "--mask", "SMALLMASK"], "mask must be 16x16"),
    ("layout", ["--layout", '[{"box": [0.5, 0.5, 1.5, 0.9], "class": "bag", "color": "red"}]'], "outside the canvas"),
    ("layout", ["--layout", '[{"box": [0.1, 0.1, 0.5, 0.5], "class": "hat", "color": "red"}]'], "unknown class 'hat'"),
    ("text", ["--prompt", "a bag", "--layout", '[{"box": [0.1, 0.1, 0.5, 0.5], "class": "bag"}]'], "--layout needs"),
    ("layout", ["--image", "IMG", "--mask", "SMALLMASK"], "need an inpainting run"),
])
def test_cli_bad_input_is_a_usage_error(runs, tmp_path, capsys, which, args, msg):
    files = {"IMG": _png(tmp_path / "img.png", torch.zeros(16, 16, 3)),
             "SMALLMASK": _png(tmp_path / "m.png", torch.full((8, 8), 255))}
    args = [str(files.get(a, a)) for a in args]
    assert run_cli("sample", runs / which, *args, "--n", "2", "--steps", "2", "--out", tmp_path / "x.png") == 2
    assert msg in capsys.readouterr().err


def test_evaluation_conditions_carry_captions_and_objects_for_the_metrics(runs):
    import genlab
    from genlab.training.data import eval_conditions

    run = genlab.load(runs / "text")
    cond = eval_conditions(run.config, ldm.needs(run.config.model), 3)
    assert {"text", "obj_classes", "obj_colors", "obj_cells", "heldout"} <= set(cond)
    assert run.sample(3, seed=0, cond=cond).shape == (3, 3, 16, 16)


def test_cli_first_stage_of_another_data_shape_is_a_usage_error(runs, tmp_path, capsys):
    assert run_cli("train", "ldm", "--data", "digits", f"model.autoencoder={runs / 'ae-scenes'}", *FAST_TRAIN,
                   "train.steps=1", "--out", tmp_path / "bad") == 2
    assert "trained on data of shape [3, 16, 16]" in capsys.readouterr().err


def test_captioned_grid_puts_each_prompt_under_its_image():
    from genlab.report.prompts import captioned_grid

    images = torch.zeros(3, 3, 16, 16, dtype=torch.uint8)
    grid = captioned_grid(images, ["a red bag", "a blue sneaker at the top left and a green coat", "x"], ncol=3)
    assert grid.dtype == torch.uint8 and grid.shape[0] == 3 and grid.shape[2] > 3 * 128
    assert (grid < 128).any(dim=0)[140:].any()  # dark text pixels below the (black) tiles' area
    with pytest.raises(ValueError, match="2 captions for 3 images"):
        captioned_grid(images, ["a", "b"])
