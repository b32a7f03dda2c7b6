"""`genlab eval` / `genlab anomaly` on awkward input: value ranges, small n, the floor's n, bad files and paths."""

import json
import warnings

import numpy as np
import pytest
import torch
from conftest import FAST_TRAIN, TINY_VAE, run_cli

from genlab.data import load_dataset, to_float
from genlab.data.png import save_png
from genlab.errors import GenlabError, UsageError
from genlab.metrics import METRIC_FNS, METRICS, EvalWarning, evaluate, floor
from genlab.metrics.protocols import _as_uint8


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GENLAB_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def digits_test():
    return load_dataset("digits", "test").x


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "vae-digits"
    assert run_cli("train", "vae", "--data", "digits", *TINY_VAE, *FAST_TRAIN, "train.steps=2", "--out", out) == 0
    return out


def _row(printed: str, name: str) -> list[str]:
    return next(line.split() for line in printed.splitlines() if line.startswith(name))


# ---- 1. value range of float images


def test_float_ranges_are_read_from_the_values(digits_test):
    x = digits_test
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # [-1, 1] (has negatives) and uint8: no note
        assert torch.equal(_as_uint8(to_float(x)), x) and torch.equal(_as_uint8(x), x)
    with pytest.warns(EvalWarning, match=r"read as \[0, 1\].*--range=-1,1"):
        assert torch.equal(_as_uint8(x.float() / 255), x)
    with pytest.warns(EvalWarning, match=r"read as \[0, 255\]"):
        assert torch.equal(_as_uint8(x.float()), x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an explicit range: no note
        assert torch.equal(_as_uint8(x.double() / 255, "0,1"), x)
    overshoot = x.float() / 255
    overshoot[0, 0, 0, 0] = -0.01  # e.g. bicubic resampling of [0, 1] images: still [0, 1], clamped
    with pytest.warns(EvalWarning, match=r"read as \[0, 1\]"):
        assert torch.equal(_as_uint8(overshoot)[1:], x[1:])


def test_real_images_as_unit_floats_score_the_floor_not_a_bad_model(digits_test):
    with pytest.warns(EvalWarning, match=r"read as \[0, 1\]"):
        out = evaluate(digits_test.float() / 255, None, protocol="digits", metrics=("fid", "pr"))
    assert out["fid"] <= floor("digits", metrics=("fid",))["fid"] and out["precision"] == 1.0  # the data itself
    misread = evaluate(digits_test.float() / 255, None, protocol="digits", metrics=("fid",), value_range="-1,1")
    assert misread["fid"] > 10  # what the old [-1, 1] reading gave


@pytest.mark.parametrize(
    "images,value_range,message",
    [
        (torch.full((4, 1, 8, 8), -3.0), None, r"\[-1, 1\], \[0, 1\] or \[0, 255\], got values in \[-3, -3\]"),
        (torch.full((4, 1, 8, 8), 300.0), None, r"got values in \[300, 300\]"),
        (torch.full((4, 1, 8, 8), 200.0), "0,1", r"the given range \[0, 1\]"),
    ],
)
def test_float_values_outside_every_range_are_errors(images, value_range, message):
    with pytest.raises(ValueError, match=message):
        _as_uint8(images, value_range)


def test_unknown_value_range():
    with pytest.raises(UsageError, match="unknown value range '0,2'"):
        _as_uint8(torch.zeros(2, 1, 8, 8), "0,2")


def test_cli_npz_of_unit_floats(digits_test, tmp_path, capsys):
    np.savez(tmp_path / "unit.npz", images=digits_test.numpy().astype(np.float32) / 255)
    assert run_cli("eval", tmp_path / "unit.npz", "--protocol", "digits", "--metrics", "fid") == 0
    captured = capsys.readouterr()
    assert float(_row(captured.out, "unit.npz")[2]) < 1e-6 and "read as [0, 1]" in captured.err
    assert run_cli("eval", tmp_path / "unit.npz", "--protocol", "digits", "--metrics", "fid", "--range=0,1") == 0
    captured = capsys.readouterr()
    assert float(_row(captured.out, "unit.npz")[2]) < 1e-6 and "read as" not in captured.err
    assert run_cli("eval", tmp_path / "unit.npz", "--protocol", "digits", "--metrics", "fid", "--range=-1,1") == 0
    assert float(_row(capsys.readouterr().out, "unit.npz")[2]) > 10


# ---- 6, 7. the floor at the generated side's n; a warning at small n


def test_floor_is_computed_at_the_generated_n(digits_test, tmp_path, capsys):
    full, small = floor("digits", metrics=("dc",)), floor("digits", metrics=("dc",), n=60)
    assert full["protocol"]["n_fake"] == 359 and small["protocol"]["n_fake"] == 60
    assert small["coverage"] < full["coverage"] - 0.1  # coverage of real data itself drops with n
    np.savez(tmp_path / "imgs.npz", images=digits_test[:60].numpy())
    assert run_cli("eval", tmp_path / "imgs.npz", "--protocol", "digits", "--metrics", "fid,dc",
                   "--json", tmp_path / "e.json") == 0
    printed = capsys.readouterr().out
    assert "data vs data: n = 60 images of digits/train, the same n as the generated images" in printed
    assert _row(printed, "data vs data (")[6] == "60"
    payload = json.loads((tmp_path / "e.json").read_text())
    assert payload["floor"]["protocol"]["n_fake"] == payload["result"]["protocol"]["n_fake"] == 60
    assert payload["floor"]["coverage"] == pytest.approx(small["coverage"])


def test_small_n_warns_with_the_minimum(digits_test, tmp_path, capsys):
    with pytest.warns(EvalWarning, match="only 64 images; 359 is the minimum for fid.*biased"):
        evaluate(digits_test[:64], None, protocol="digits", metrics=("fid",))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        evaluate(digits_test, None, protocol="digits", metrics=("fid",))  # the protocol's n: no warning
        evaluate(digits_test[:64], None, protocol="digits", metrics=("modes",))  # not a sample-size metric
    np.savez(tmp_path / "few.npz", images=digits_test[:64].numpy())
    assert run_cli("eval", tmp_path / "few.npz", "--protocol", "digits", "--metrics", "fid,kid,pr") == 0
    err = capsys.readouterr().err
    assert err.count("genlab: warning: only 64 images; 359 is the minimum for fid, kid, pr") == 1  # once, not per row


# ---- 8. metrics as a dict of functions, results unchanged


def test_metric_functions_dict_and_golden_floor():
    assert set(METRIC_FNS) | {"nll"} == set(METRICS)
    out = floor("digits", metrics=("fid", "kid", "is", "pr", "dc", "acc", "modes"))
    golden = {"fid": 1.0794763210476646, "kid": 0.00156180110528922, "is": 5.591918829210179,
              "precision": 0.8997214484679665, "recall": 0.8022284122562674, "density": 1.014484679665738,
              "coverage": 0.9721448467966574, "classes_covered": 10, "class_reverse_kl": 0.02855102956231594,
              "cond_acc": 1.0}  # the values before the refactor
    for k, v in golden.items():
        assert out[k] == pytest.approx(v, rel=1e-6), k
    assert list(out)[:4] == ["fid", "kid", "kid_std", "kid_subset_size"]


# ---- 3, 4, 5. files and paths


def test_png_folder_of_mixed_sizes_names_the_sizes(digits_test, tmp_path, capsys):
    for i, im in enumerate(digits_test[:3]):
        save_png(im, tmp_path / "pngs" / f"{i}.png")
    save_png(torch.zeros(1, 28, 28, dtype=torch.uint8), tmp_path / "pngs" / "big.png")
    assert run_cli("eval", tmp_path / "pngs", "--protocol", "digits") == 1
    err = capsys.readouterr().err
    assert "differ in size" in err and "3 of 1x8x8" in err and "1 of 1x28x28" in err and "big.png" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("content,message", [(b"", "empty"), (b"\x89PNG\r\n\x1a\nnot really", "corrupt")])
def test_empty_or_corrupt_png_names_the_file(digits_test, tmp_path, capsys, content, message):
    save_png(digits_test[0], tmp_path / "pngs" / "good.png")
    (tmp_path / "pngs" / "bad.png").write_bytes(content)
    assert run_cli("eval", tmp_path / "pngs", "--protocol", "digits") == 1
    err = capsys.readouterr().err
    assert "bad.png" in err and message in err


def test_truncated_png_names_the_file(digits_test, tmp_path, capsys):
    path = save_png(digits_test[0], tmp_path / "pngs" / "cut.png")
    path.write_bytes(path.read_bytes()[:40])
    assert run_cli("eval", tmp_path / "pngs", "--protocol", "digits") == 1
    assert "cut.png" in capsys.readouterr().err


def test_empty_folder_and_missing_path_mention_npz(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert run_cli("eval", tmp_path / "empty", "--protocol", "digits") == 1
    err = capsys.readouterr().err
    assert "no PNG files" in err and ".npz file of uint8 images" in err
    assert run_cli("eval", tmp_path / "nope", "--protocol", "digits") == 1
    assert "not found" in capsys.readouterr().err


def test_json_path_that_is_a_folder_or_under_a_file(digits_test, tmp_path, capsys):
    np.savez(tmp_path / "imgs.npz", images=digits_test.numpy())
    assert run_cli("eval", tmp_path / "imgs.npz", "--protocol", "digits", "--json", tmp_path) == 1
    assert "is a folder; give a file name" in capsys.readouterr().err
    (tmp_path / "afile").write_text("x")
    assert run_cli("eval", tmp_path / "imgs.npz", "--protocol", "digits", "--json", tmp_path / "afile" / "e.json") == 1
    err = capsys.readouterr().err
    assert "cannot create its folder" in err and "afile" in err and "Traceback" not in err


def test_missing_data_dir_is_an_error_naming_it(tmp_path):
    missing = tmp_path / "no-such-dir"
    with pytest.raises(GenlabError, match=f"data directory {missing} does not exist"):
        load_dataset("fashion-mnist", "test", data_dir=str(missing))
    (tmp_path / "file").write_text("x")
    with pytest.raises(GenlabError, match="is a file, not a folder"):
        load_dataset("mnist", "test", data_dir=str(tmp_path / "file"))


# ---- 2, 9. runs: anomaly classes, the floor in eval.jsonl


def test_anomaly_normal_class_out_of_range(vae_run, capsys):
    assert run_cli("anomaly", vae_run, "--normal", "42") == 2
    err = capsys.readouterr().err
    assert "no class 42 in 'digits'" in err and "0..9" in err and "Traceback" not in err
    assert run_cli("anomaly", vae_run, "--normal", "0,x") == 2
    assert "comma list of class numbers" in capsys.readouterr().err
    assert run_cli("anomaly", vae_run, "--normal", ",".join(map(str, range(10))), "--threshold", "1") == 2
    assert "every class" in capsys.readouterr().err


def test_eval_of_a_run_records_the_floor(vae_run, capsys):
    assert run_cli("eval", vae_run, "--n", "40", "--metrics", "fid,pr") == 0
    record = json.loads((vae_run / "eval.jsonl").read_text().splitlines()[-1])
    assert record["n"] == 40 and set(record["floor"]) == {"fid", "precision", "recall"}
    assert 0 < record["floor"]["fid"] < record["fid"]  # a 2-step VAE is far from data
    assert "data vs data: n = 40 images" in capsys.readouterr().out
