"""StyleGAN family: AdaIN statistics, style mixing (w1 below the crossover, w2 above), truncation (psi = 1 is
the identity, psi = 0 the mean w), w_avg tracking, the mixing grid, PPL in Z and W, the CLI options, bad input."""

import pytest
import torch
from conftest import FAST_TRAIN, plain_step, run_cli, spec_for

from genlab.config import build_run_config
from genlab.errors import UsageError
from genlab.models import stylegan
from genlab.nn.style import adain
from genlab.training.evaluation import path_length

TINY = dict(channels=8, min_channels=4, latent_dim=8, w_dim=8, mapping_layers=2, mbstd_group=2)


def build(shape=(3, 16, 16), **kw):
    torch.manual_seed(0)
    cfg = stylegan.Config(**{**TINY, **kw})
    return stylegan.build(cfg, spec_for(shape), {}), cfg


def test_adain_gives_the_styles_mean_and_std_per_channel():
    torch.manual_seed(0)
    x = torch.randn(3, 4, 8, 8) * 5 + 2
    y_s, y_b = torch.rand(3, 4) + 0.5, torch.randn(3, 4)
    out = adain(x, y_s, y_b)
    assert torch.allclose(out.mean(dim=(2, 3)), y_b, atol=1e-5)
    assert torch.allclose(out.std(dim=(2, 3), unbiased=False), y_s, atol=1e-4)


def test_mixing_uses_w1_below_the_crossover_and_w2_above():
    model, cfg = build()
    G = model["G"]
    assert G.num_layers == 6  # 4, 8, 16: two style layers each
    z1, z2 = torch.randn(3, 8), torch.randn(3, 8)
    crossover = torch.tensor([1, 3, 6])
    with torch.no_grad():
        ws = G.styles(z1, z2, crossover)
        w1, w2 = G.mapping_net(z1), G.mapping_net(z2)
    for b, c in enumerate(crossover.tolist()):
        for layer in range(6):
            assert torch.equal(ws[b, layer], w1[b] if layer < c else w2[b]), (b, layer)


def test_truncation_psi_1_is_identity_and_psi_0_is_the_mean_w():
    model, _ = build()
    G = model["G"]
    G.w_avg.copy_(torch.randn(8))
    z = torch.randn(5, 8)
    with torch.no_grad():
        assert torch.equal(G.styles(z, psi=1.0), G.styles(z))
        assert torch.allclose(G.styles(z, psi=0.0), G.w_avg.expand(5, 6, 8))
        half = G.styles(z, psi=0.5)[:, 0]
        assert torch.allclose(half, G.w_avg + 0.5 * (G.mapping_net(z) - G.w_avg), atol=1e-6)
    s = stylegan.sample(model, 4, generator=torch.Generator().manual_seed(0), truncation=1.0)
    assert torch.equal(s, stylegan.sample(model, 4, generator=torch.Generator().manual_seed(0)))
    model_nn, _ = build(noise=False)
    model_nn["G"].w_avg.copy_(torch.randn(8))
    same = stylegan.sample(model_nn, 3, generator=torch.Generator().manual_seed(0), truncation=0.0)
    assert torch.allclose(same, same[:1].expand_as(same), atol=1e-6)  # every sample is the mean-w image


def test_train_step_tracks_w_avg_and_path_length_target():
    model, cfg = build(pl_weight=1.0, w_avg_beta=0.9)
    opts = stylegan.make_optimizers(model, cfg)
    x = torch.rand(4, 3, 16, 16) * 2 - 1
    logs = plain_step(stylegan, model, {"x": x}, opts)
    assert {"loss_d", "loss_g", "r1", "pl_mean"} <= set(logs) and float(model["G"].pl_mean) > 0
    w_avg = model["G"].w_avg.clone()
    assert w_avg.abs().sum() > 0
    logs = plain_step(stylegan, model, {"x": x}, opts, micro_batches=2)
    assert "pl_penalty" in logs and not torch.equal(w_avg, model["G"].w_avg)


@pytest.mark.parametrize("kw", [dict(mapping=False, const_input=False, mixing_prob=0.0, noise=False),
                                dict(const_input=False), dict(noise=False, mixing_prob=0.0)])
def test_ablation_rows_build_train_and_sample(kw):
    model, cfg = build(**kw)
    opts = stylegan.make_optimizers(model, cfg)
    logs = plain_step(stylegan, model, {"x": torch.rand(4, 3, 16, 16) * 2 - 1}, opts)
    assert all(torch.isfinite(torch.tensor(v)) for v in logs.values())
    assert (model["G"].mapping_net is None) == (not cfg.mapping) and (model["G"].const is None) == (not cfg.const_input)
    s = stylegan.sample(model, 3, generator=torch.Generator().manual_seed(1))
    assert s.shape == (3, 3, 16, 16) and s.min() >= -1 and s.max() <= 1


def test_style_mixing_grid():
    model, _ = build()
    G = model["G"]
    grid = stylegan.style_mixing(model, [1, 2], [3, 4, 5], crossover=2)
    assert grid.shape == (3, 4, 3, 16, 16) and torch.equal(grid[0, 0], torch.ones(3, 16, 16))
    with torch.no_grad():
        z = {s: torch.randn(8, generator=torch.Generator().manual_seed(s)) for s in (1, 2, 3, 4, 5)}
        w = {s: G.mapping_net(z[s][None])[0] for s in z}
        ws = torch.stack([w[2]] * 2 + [w[4]] * 4)[None]  # row seed 2 coarse, column seed 4 fine
        cell = G.synthesis(ws, stylegan.const_noise(G, 1, "cpu")).clamp(-1, 1)[0]
        src = stylegan.synthesis(model, w[3][None]).clamp(-1, 1)[0]
    assert torch.allclose(grid[2, 2], cell, atol=1e-5)  # row 2 = seed 2, column 2 = seed 4
    assert torch.allclose(grid[0, 1], src, atol=1e-5)  # the column sources on top
    with pytest.raises(ValueError, match="beyond the network's depth: this generator has 6 style layers"):
        stylegan.style_mixing(model, [1], [2], crossover=6)
    with pytest.raises(ValueError, match="beyond"):
        stylegan.style_mixing(model, [1], [2], crossover=0)


def test_bad_input_is_a_clear_error():
    model, _ = build()
    for psi in (-0.1, 1.5):
        with pytest.raises(ValueError, match=r"truncation psi must be in \[0, 1\]"):
            stylegan.sample(model, 2, truncation=psi)
    with pytest.raises(ValueError, match="const_input=true needs model.mapping=true"):
        build(mapping=False)
    with pytest.raises(ValueError, match="style mixing needs"):
        build(mapping=False, const_input=False)
    trad, _ = build(mapping=False, const_input=False, mixing_prob=0.0)
    with pytest.raises(ValueError, match="truncation works in W"):
        stylegan.sample(trad, 2, truncation=0.5)
    with pytest.raises(ValueError, match="no W space"):
        stylegan.mapping(trad, torch.randn(2, 8))
    with pytest.raises(ValueError, match="power of two"):
        build(shape=(1, 28, 28))


def test_path_length_in_z_and_w():
    model, _ = build(shape=(3, 32, 32))
    cfg = build_run_config("stylegan", stylegan.Config, {"data": {"name": "fmnist-color"}})
    cfg.model = model.cfg
    out = {(s, m): path_length(stylegan, model, cfg, space=s, sampling=m, n=8, batch_size=4)
           for s in ("z", "w") for m in ("full", "end")}
    for (s, m), r in out.items():
        assert r["space"] == s and r["sampling"] == m and r["n"] == 8 and r["ppl"] >= 0
        assert r["distance"] == "domain-lpips:fmnist-color-net"
    trad, _ = build(shape=(3, 32, 32), mapping=False, const_input=False, mixing_prob=0.0)
    cfg.model = trad.cfg
    assert path_length(stylegan, trad, cfg, space="z", n=4)["ppl"] >= 0
    with pytest.raises(UsageError, match="no W space"):
        path_length(stylegan, trad, cfg, space="w", n=4)


def test_cli_truncation_and_mixing(tmp_path, capsys):
    run = tmp_path / "r"
    args = ["--data", "digits", *[f"model.{k}={v}" for k, v in TINY.items()], *FAST_TRAIN, "train.steps=2"]
    assert run_cli("train", "stylegan", *args, "--out", run) == 0
    assert run_cli("sample", run, "--n", "4", "--truncation", "0.7", "--out", tmp_path / "t.png") == 0
    assert (tmp_path / "t.png").exists()
    assert run_cli("sample", run, "--mix", "--out", tmp_path / "m.png") == 0
    assert (tmp_path / "m.png").exists() and "style-mixing grid" in capsys.readouterr().out
    assert run_cli("sample", run, "--mix", "9") == 2
    assert "beyond the network's depth" in capsys.readouterr().err
    assert run_cli("sample", run, "--truncation", "1.5") == 2
    assert "truncation psi must be in [0, 1]" in capsys.readouterr().err
