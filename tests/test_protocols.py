"""Protocols end to end on digits (bundled digits-net): evaluate(), the floor row, the cache, `genlab eval`."""

import json

import numpy as np
import pytest
import torch
from conftest import FAST_TRAIN, TINY_DDPM, run_cli

from genlab.data import load_dataset, to_float
from genlab.errors import UsageError
from genlab.metrics import evaluate, floor
from genlab.metrics.protocols import extract_features, get_protocol, reference_features


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GENLAB_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_data_against_itself_is_perfect(cache):
    x = load_dataset("digits", "test").x
    out = evaluate(x, None, protocol="digits", metrics=("fid", "kid", "pr", "dc", "is"))
    assert out["fid"] == pytest.approx(0.0, abs=1e-6)
    assert out["precision"] == out["recall"] == out["density"] == out["coverage"] == 1.0
    assert out["is"] > 5  # a 99% accurate classifier on balanced digits
    rec = out["protocol"]
    assert rec["extractor"] == "digits-net" and len(rec["extractor_sha256"]) == 64 and rec["n_fake"] == len(x)
    assert list(cache.rglob("digits-test-digits-net-*.safetensors"))  # reference features cached, keyed by hash


def test_float_images_are_quantised_like_saved_pngs():
    x = load_dataset("digits", "test").x[:50]
    a = extract_features(x, "digits-net")["features"]
    b = extract_features(to_float(x), "digits-net")["features"]
    assert np.array_equal(a, b)


def test_floor_row_and_conditional_accuracy():
    base = floor("digits", metrics=("fid", "acc"))
    assert 0 < base["fid"] < 20 and base["cond_acc"] > 0.95  # train labels through a ~99% classifier
    x = load_dataset("digits", "test")
    out = evaluate(x.x, None, protocol="digits", metrics=("acc",), labels=(x.y + 1) % 10)
    assert out["cond_acc"] < 0.05  # wrong labels, low accuracy


def test_reference_cache_is_reused(monkeypatch):
    p = get_protocol("digits")
    first = reference_features(p)
    monkeypatch.setattr("genlab.metrics.protocols.load_dataset", lambda *a, **k: (_ for _ in ()).throw(AssertionError))
    second = reference_features(p)  # from disk: no dataset load
    assert np.array_equal(first["features"], second["features"])


@pytest.mark.parametrize(
    "images,message",
    [
        (torch.zeros(10, 8, 8, dtype=torch.uint8), r"\(N, C, H, W\)"),
        (torch.full((10, 1, 8, 8), 300.0), r"\[-1, 1\], \[0, 1\] or \[0, 255\]"),  # 3.0 would be read as [0, 255]
        (torch.full((10, 1, 8, 8), float("nan")), "NaN"),
        (torch.zeros(10, 1, 8, 8, dtype=torch.int32), "uint8"),
    ],
)
def test_bad_images(images, message):
    with pytest.raises(ValueError, match=message):
        evaluate(images, None, protocol="digits", metrics=("fid",))


def test_unknown_metric_and_protocol():
    with pytest.raises(UsageError, match="unknown metric 'lpips'"):
        evaluate(load_dataset("digits", "test").x, None, protocol="digits", metrics=("lpips",))
    with pytest.raises(UsageError, match="unknown protocol 'cifar10'"):
        get_protocol("cifar10")


def test_genlab_eval_on_a_run_and_eval_during_training(tmp_path, capsys):
    out = tmp_path / "run"
    assert run_cli("train", "ddpm", "--data", "digits", *TINY_DDPM, *FAST_TRAIN, "train.steps=2",
                   "eval.every=1", "eval.n=40", "eval.metrics=fid,kid,pr", "--out", out) == 0
    lines = [json.loads(x) for x in (out / "eval.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2] and all("fid" in r and r["n"] == 40 for r in lines)
    html = (out / "report.html").read_text()
    assert "FID" in html and "real data vs real data" in html
    capsys.readouterr()
    assert run_cli("eval", out, "--n", "30", "--metrics", "fid,kid,is", "--steps", "2", "--json", tmp_path / "e.json") == 0
    printed = capsys.readouterr().out
    assert "data vs data (train vs test)" in printed and "ddpm @ step 2" in printed
    payload = json.loads((tmp_path / "e.json").read_text())
    assert payload["result"]["protocol"]["n_fake"] == 30 and "fid" in payload["floor"]


def test_genlab_eval_on_png_folder_and_npz(tmp_path, capsys):
    from genlab.data.png import save_png

    x = load_dataset("digits", "test").x[:60]
    for i, im in enumerate(x):
        save_png(im, tmp_path / "pngs" / f"{i:03d}.png")
    np.savez(tmp_path / "imgs.npz", images=x.numpy())
    assert run_cli("eval", tmp_path / "pngs", "--protocol", "digits", "--metrics", "fid,pr") == 0
    assert run_cli("eval", tmp_path / "imgs.npz", "--protocol", "digits", "--metrics", "fid,pr") == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith(("pngs", "imgs.npz"))]
    assert len(rows) == 2 and rows[0].split()[1:] == rows[1].split()[1:]  # same images, same numbers
    assert run_cli("eval", tmp_path / "pngs", "--protocol", "digits", "--metrics", "fud") == 2
