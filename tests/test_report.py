"""The run report: what report.html says (unit checks of its HTML) and how it looks in a browser (headless
Chromium at 1280 px: no sideways scrolling, every image loaded).

The browser tests need Chromium (`apt-get install chromium`; scripts/test.sh installs it). Without it they fail
with a message saying so, unless GENLAB_SKIP_BROWSER=1 is set.
"""

import json
import math
import os
import re

import pytest
import torch
from conftest import FAST_TRAIN, TINY_VAE, run_cli

from genlab.data.png import save_grid
from genlab.report import write_report
from genlab.report.browser import check_layout, find_chromium
from genlab.report.text import duration, number, rate

VAE_LOSSES = ("loss", "rec", "kl")


def _write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def make_run(root, *, family="vae", evaluated=True, floor=True, command=None, steps=300):
    """A run folder written by hand: config, status, losses with a first-step spike, two sample grids."""
    run = root / f"{family}-digits"
    (run / "samples").mkdir(parents=True)
    (run / "config.yaml").write_text(
        f"family: {family}\ndata:\n  name: digits\ntrain:\n  steps: {steps}\n  batch_size: 32\n  grad_accum: 1\n"
        "  log_every: 1\n  ema_decay: 0.999\n  seed: 0\neval:\n  n: 0\nmodel:\n  latent_dim: 16\n")
    info = {"status": "done", "step": steps, "family": family, "data": "digits", "genlab_version": "0.1.0",
            "updated": "2025-01-01 12:00:00", "train_s": 2763.4, "images_per_s": 1234.56, "sample_s": 4.2,
            "processes": 1}
    if command:
        info["command"] = command
    (run / "run.json").write_text(json.dumps(info))
    g = torch.Generator().manual_seed(0)
    records = []
    for s in range(1, steps + 1):  # a spike at step 1, then a noisy decay; kl rises then settles
        noise = 1 + 0.2 * torch.rand((), generator=g).item()
        rec = (5000.0 if s == 1 else 40 + 60 * math.exp(-s / 50)) * noise
        kl = 2 + 8 * (1 - math.exp(-s / 30))
        records.append({"step": s, "loss": rec + kl, "rec": rec, "kl": kl, "lr": 1e-3, "time_s": s * 9.2})
    _write_jsonl(run / "metrics.jsonl", records)
    for s in (steps // 2, steps):
        x = torch.randint(0, 256, (64, 1, 8, 8), dtype=torch.uint8, generator=g)
        save_grid(x, run / "samples" / f"step-{s:07d}.png")
    if evaluated:
        rec = {"step": steps, "fid": 8.123, "kid": 0.0123, "kid_std": 0.0011, "kid_subset_size": 300, "precision": 0.71,
               "recall": 0.52, "density": 0.88, "coverage": 0.64, "protocol": "digits", "n": 359}
        if floor:
            rec["floor"] = {"fid": 1.234, "kid": 0.0002, "kid_std": 0.0004, "precision": 0.8, "recall": 0.79,
                            "density": 1.01, "coverage": 0.93}
        _write_jsonl(run / "eval.jsonl", [rec])
    return run


# ----------------------------------------------------------------------------------------------------- words


def test_durations_rates_and_numbers_read_like_text():
    assert duration(2763) == "46 min 3 s"
    assert duration(4.24) == "4.2 s" and duration(59.6) == "1 min 0 s" and duration(7384) == "2 h 3 min"
    assert duration(None) == "-"
    assert rate(1234.56) == "1,235 images/s" and rate(3.456) == "3.46 images/s"
    assert number(123456.7) == "123,457" and number(8.1234) == "8.123" and number(12) == "12"


# ------------------------------------------------------------------------------------------------------ HTML


def test_report_explains_metrics_with_a_floor_row(tmp_path):
    run = make_run(tmp_path)
    page = write_report(run).read_text()
    assert "FID \u2193" in page and "Recall \u2191" in page and "KID \u2193" in page
    assert "real data vs real data" in page and 'class="floor"' in page
    floor_row = re.search(r'<tr class="floor">(.*?)</tr>', page).group(1)
    assert "1.234" in floor_row and "359" in floor_row  # the floor's FID, at the model's n
    assert "0.0123 \u00b1 0.0011" in page  # KID with its spread
    for words in ("Fr\u00e9chet distance", "k-NN neighbourhoods", "Naeem et al. 2020"):  # one line per metric
        assert words in page
    assert "kid_std" not in page and "kid_subset_size" not in page  # companions folded into their metric
    assert "6.6x the floor" in page  # 8.123 / 1.234
    assert "46 min 3 s" in page and "1,235 images/s" in page and "train_s" not in page
    assert "9.2 s per step" in page  # 2763.4 s / 300 steps
    assert "genlab train vae --data digits --config " + str(run / "config.yaml") in page
    assert "<script" not in page and "http://" not in page and "https://" not in page  # static, offline


def test_report_losses_plot_and_sample_grids(tmp_path):
    run = make_run(tmp_path)
    page = write_report(run).read_text()
    assert (run / "report" / "losses.png").exists() and "report/losses.png" in page
    assert "Training curves" in page and "logarithmic" in page
    assert page.count("samples/step-0000300.png") == 2  # large, and at the end of the row over training
    assert "samples/step-0000150.png" in page and "Over training" in page
    hero = re.search(r'<figure class="px hero"><img src="samples/step-0000300.png" style="width:(\d+)px"', page)
    assert hero and int(hero.group(1)) >= 600  # 82 px grid of 8x8 digits x4 -> 328 px natural -> 2x on the page
    assert "image-rendering: pixelated" in page


def test_report_without_evaluation_shows_the_command(tmp_path):
    run = make_run(tmp_path, evaluated=False, command="genlab train vae --data digits model.latent_dim=16")
    page = write_report(run).read_text()
    assert "No evaluation yet" in page and "eval.jsonl is empty" not in page
    assert f"genlab eval {run} --n 2000" in page
    assert "genlab train vae --data digits model.latent_dim=16" in page  # run.json's command, as recorded
    (run / "eval.jsonl").write_text("")  # an empty file reads the same
    assert "No evaluation yet" in write_report(run).read_text()


def test_report_without_floor_says_where_the_floor_comes_from(tmp_path):
    run = make_run(tmp_path, floor=False)
    page = write_report(run).read_text()
    assert 'class="floor"' not in page and "genlab eval data --protocol digits --n 359" in page


# --------------------------------------------------------------------------------------------------- browser


def _need_chromium():
    if find_chromium():
        return
    if os.environ.get("GENLAB_SKIP_BROWSER") == "1":
        pytest.skip("GENLAB_SKIP_BROWSER=1 and no Chromium")
    pytest.fail("headless Chromium is needed to check the report's layout: apt-get install chromium "
                "(scripts/test.sh does it), or set GENLAB_SKIP_BROWSER=1 to skip these checks")


def _assert_reads_well(page):
    r = check_layout(page, width=1280)
    assert r["scrollWidth"] <= r["viewport"], f"page overflows sideways at 1280 px: {r}"
    assert r["images"] > 0 and not r["broken"], f"images that did not load: {r['broken']}"
    return r


def test_hand_made_report_fits_1280_px_and_loads_every_image(tmp_path):
    _need_chromium()
    run = make_run(tmp_path)
    r = _assert_reads_well(write_report(run))
    assert r["images"] == 4  # newest grid, the row of two, the loss plot
    narrow = check_layout(run / "report.html", width=480)  # a phone: still no sideways scrolling
    assert narrow["scrollWidth"] <= narrow["viewport"], narrow


def test_real_vae_run_report_in_a_browser(tmp_path):
    """A 3-step VAE run through the CLI: reconstructions, latents, interpolations, losses; all of it on the page."""
    _need_chromium()
    out = tmp_path / "vae"
    assert run_cli("train", "vae", "--data", "digits", *TINY_VAE, *FAST_TRAIN, "train.steps=3", "--out", out) == 0
    page = (out / "report.html").read_text()
    assert "No evaluation yet" in page and "Latent space" in page and "Reconstructions" in page
    assert "genlab train vae --data digits" in page  # the command that made the run
    r = _assert_reads_well(out / "report.html")
    assert r["images"] >= 5  # samples, reconstructions, latents, interpolations, losses
