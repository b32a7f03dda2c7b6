"""Domain evaluators (API, loading errors, bundled weights) and the FID Inception-v3 (strict loading)."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from genlab.errors import GenlabError, UsageError
from genlab.metrics import evaluators as ev
from genlab.metrics.evaluators import Evaluator, extract, load_evaluator, save_evaluator, weights_hash
from genlab.metrics.inception import FIDInceptionV3, _tf_avg_pool, load_fid_inception

ROOT = Path(__file__).resolve().parent.parent


def images(n, c=1, size=28, seed=0):
    return torch.randint(0, 256, (n, c, size, size), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def tiny_digits_net():
    torch.manual_seed(0)
    return Evaluator(1, 8, 10, widths=(8, 16), convs=(1, 1), feature_dim=32).eval()


# ---------------------------------------------------------------------------------------------------------------
# Evaluator API


def test_evaluator_shapes_and_batch_independence():
    model = Evaluator(1, 28, 10).eval()
    x = images(6)
    with torch.no_grad():
        f, logits = model.features_and_logits(x)
        assert f.shape == (6, 256) and logits.shape == (6, 10)
        assert torch.allclose(model.features(x[:2]), f[:2], atol=1e-5)  # eval-mode BatchNorm: no batch coupling
        assert torch.allclose(model.logits(x), logits)
        maps = model.feature_maps(torch.zeros(2, 1, 28, 28))
    assert [tuple(m.shape) for m in maps] == [(2, 32, 28, 28), (2, 64, 14, 14), (2, 128, 7, 7)]


@pytest.mark.parametrize(
    "x, match",
    [
        (torch.zeros(2, 1, 28, 28), "dtype torch.float32"),
        (images(2, c=3), "3 channels"),
        (images(2, size=32), r"spatial size \(32, 32\)"),
        (torch.zeros(28, 28, dtype=torch.uint8), "shape"),
    ],
)
def test_evaluator_input_errors_name_the_expectation(x, match):
    model = Evaluator(1, 28, 10)
    with pytest.raises(ValueError, match=match) as info:
        model.features(x)
    assert r"uint8 images (B, 1, 28, 28)" in str(info.value)


def test_extract_batches_and_restores_mode():
    model = tiny_digits_net().train()
    x = images(23, size=8)
    a = extract(model, x, batch_size=5)
    b = extract(model, x, batch_size=500)
    assert model.training  # mode restored
    assert a["features"].dtype == torch.float32 and a["features"].shape == (23, 32) and a["logits"].shape == (23, 10)
    assert torch.allclose(a["features"], b["features"], atol=1e-5) and torch.allclose(a["logits"], b["logits"], atol=1e-5)
    with pytest.raises(ValueError, match="uint8"):
        extract(model, x.float())
    with pytest.raises(ValueError, match="0 images"):
        extract(model, x[:0])


def test_save_load_roundtrip_and_hash(tmp_path):
    model = tiny_digits_net()
    record = save_evaluator(model, "digits-net", {"test_accuracy": 0.5, "command": "x"}, tmp_path)
    meta = json.loads(record.read_text())
    assert meta["arch"]["widths"] == [8, 16] and meta["dataset"] == "digits"
    assert weights_hash("digits-net", tmp_path) == meta["sha256"]
    loaded = load_evaluator("digits-net", weights_dir=tmp_path)
    assert not loaded.training and loaded.meta["test_accuracy"] == 0.5
    x = images(4, size=8)
    with torch.no_grad():
        assert torch.equal(loaded.logits(x), model.logits(x))
    assert not list(tmp_path.glob(".*tmp*"))  # atomic writes leave no temp files
    # A replaced / corrupted weights file no longer matches its record.
    tensors = tmp_path / "digits-net.safetensors"
    tensors.write_bytes(tensors.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(GenlabError, match="does not match its record"):
        load_evaluator("digits-net", weights_dir=tmp_path)


def test_unknown_and_untrained_evaluators(tmp_path):
    with pytest.raises(UsageError, match=r"unknown evaluator 'fmnist'; expected one of: digits-net, fmnist-color-net, fmnist-net, "
                       r"mnist-net, scenes-cell-net, scenes-clip"):
        load_evaluator("fmnist")
    with pytest.raises(GenlabError, match=r"python scripts/train_evaluator.py mnist-net"):
        load_evaluator("mnist-net", weights_dir=tmp_path)
    with pytest.raises(GenlabError, match=r"python scripts/train_evaluator.py digits-net"):
        weights_hash("digits-net", tmp_path)


@pytest.mark.parametrize("name, min_acc", [("fmnist-net", 0.93), ("digits-net", 0.95)])
def test_bundled_weights(name, min_acc):
    tensors, _ = ev.weights_paths(name)
    if not tensors.is_file():
        pytest.skip(f"{name} not trained (python scripts/train_evaluator.py {name})")
    assert tensors.stat().st_size < 2_000_000  # committed to git
    model = load_evaluator(name)
    assert model.meta["test_accuracy"] >= min_acc
    assert weights_hash(name) == model.meta["sha256"]
    assert model.meta["command"].startswith(f"python scripts/train_evaluator.py {name}")
    from genlab.data import load_dataset

    try:
        test = load_dataset(model.meta["dataset"], "test")
    except GenlabError:
        pytest.skip(f"dataset {model.meta['dataset']} not installed")
    x, y = test.x[:500], test.y[:500]
    acc = (extract(model, x)["logits"].argmax(1) == y).float().mean().item()
    assert acc >= min_acc - 0.03


def test_train_script_smoke(tmp_path):
    spec = importlib.util.spec_from_file_location("train_evaluator", ROOT / "scripts" / "train_evaluator.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main(["digits-net", "--epochs", "1", "--out-dir", str(tmp_path)]) == 0
    model = load_evaluator("digits-net", weights_dir=tmp_path)
    assert model.meta["command"] == "python scripts/train_evaluator.py digits-net --epochs 1 --seed 0"
    assert 0.0 <= model.meta["test_accuracy"] <= 1.0


def test_augment_shifts_within_padding():
    spec = importlib.util.spec_from_file_location("train_evaluator", ROOT / "scripts" / "train_evaluator.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    x = torch.zeros(64, 1, 8, 8, dtype=torch.uint8)
    x[:, :, 4, 4] = 255
    out = script.augment(x, pad=1, hflip=False, generator=torch.Generator().manual_seed(0))
    rows, cols = out[:, 0].nonzero()[:, 1], out[:, 0].nonzero()[:, 2]
    assert out.shape == x.shape and out.dtype == torch.uint8 and (out.flatten(1).sum(1) == 255).all()
    assert set(rows.tolist()) == {3, 4, 5} and set(cols.tolist()) == {3, 4, 5}


# ---------------------------------------------------------------------------------------------------------------
# FID Inception-v3


class NotAStateDict:  # pickled by torch.save; the weights-only loader must refuse to rebuild it
    pass


@pytest.fixture(scope="module")
def inception_files(tmp_path_factory):
    """A state dict in the standard key format, generated from our module, saved as .pth and .safetensors."""
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = FIDInceptionV3()
    for m in model.modules():  # non-trivial BatchNorm statistics, so a silently skipped key would show
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    d = tmp_path_factory.mktemp("inception")
    torch.save(state, d / "pt_inception-2015-12-05-6726825d.pth")
    save_file({k: v.contiguous() for k, v in state.items()}, str(d / "inception.safetensors"))
    return d, state


def _same_weights(model, state):
    got = model.state_dict()
    return all(torch.equal(got[k], v) for k, v in state.items() if not k.endswith("num_batches_tracked"))


def test_inception_keys_follow_the_standard_file():
    keys = FIDInceptionV3().state_dict()
    shapes = {k: tuple(v.shape) for k, v in keys.items()}
    assert shapes["Conv2d_1a_3x3.conv.weight"] == (32, 3, 3, 3)
    assert shapes["Mixed_5b.branch_pool.conv.weight"] == (32, 192, 1, 1)
    assert shapes["Mixed_6b.branch7x7_2.conv.weight"] == (128, 128, 1, 7)
    assert shapes["Mixed_7a.branch7x7x3_4.conv.weight"] == (192, 192, 3, 3)
    assert shapes["Mixed_7c.branch3x3dbl_3b.conv.weight"] == (384, 384, 3, 1)
    assert shapes["fc.weight"] == (1008, 2048) and shapes["fc.bias"] == (1008,)
    assert not any(k.startswith("AuxLogits") for k in keys)
    n_params = sum(v.numel() for k, v in keys.items() if "running" not in k and "num_batches" not in k)
    assert n_params == 23_850_960  # torchvision's 27,161,264 less the auxiliary head, plus 8 classes


def test_inception_tf_pooling_differences():
    model = FIDInceptionV3()
    assert model.Mixed_7b.pool == "avg" and model.Mixed_7c.pool == "max"
    # TensorFlow's average pool ignores padding: a constant map stays constant up to the borders.
    assert torch.equal(_tf_avg_pool(torch.ones(1, 2, 5, 5)), torch.ones(1, 2, 5, 5))


def test_inception_loads_pth_and_safetensors_strictly(inception_files, monkeypatch):
    d, state = inception_files
    pth = d / "pt_inception-2015-12-05-6726825d.pth"
    with pytest.warns(UserWarning, match="differs from the standard"):  # our random weights are not the real file
        model = load_fid_inception(pth)
    assert _same_weights(model, state) and not model.training and len(model.weights_sha256) == 64
    monkeypatch.setenv("GENLAB_INCEPTION", str(d / "inception.safetensors"))
    assert _same_weights(load_fid_inception(), state)
    monkeypatch.delenv("GENLAB_INCEPTION")
    monkeypatch.setenv("TORCH_HOME", str(tmp := d / "torch_home"))
    (tmp / "hub" / "checkpoints").mkdir(parents=True, exist_ok=True)
    (tmp / "hub" / "checkpoints" / pth.name).write_bytes(pth.read_bytes())
    with pytest.warns(UserWarning):
        assert _same_weights(load_fid_inception(), state)


def test_inception_missing_file_says_where_to_put_it(tmp_path, monkeypatch):
    monkeypatch.delenv("GENLAB_INCEPTION", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(GenlabError, match="not found") as info:
        load_fid_inception()
    msg = str(info.value)
    assert "pt_inception-2015-12-05-6726825d.pth" in msg and "GENLAB_INCEPTION" in msg and str(tmp_path) in msg
    assert "never downloads" in msg


def test_inception_reports_bad_keys_and_shapes(inception_files, tmp_path):
    from safetensors.torch import save_file

    _, state = inception_files
    bad = {k: v for k, v in state.items() if k != "Mixed_7c.branch_pool.conv.weight"}
    bad["fc.weight"] = torch.zeros(1000, 2048)
    bad["AuxLogits.fc.weight"] = torch.zeros(1000, 768)
    save_file(bad, str(path := tmp_path / "bad.safetensors"))
    with pytest.raises(GenlabError) as info:
        load_fid_inception(path)
    msg = str(info.value)
    assert "missing keys (1): Mixed_7c.branch_pool.conv.weight" in msg
    assert "unexpected keys (1): AuxLogits.fc.weight" in msg
    assert "fc.weight: file (1000, 2048) vs model (1008, 2048)" in msg


def test_inception_accepts_files_without_batchnorm_counters(inception_files, tmp_path):
    from safetensors.torch import save_file

    _, state = inception_files
    save_file({k: v for k, v in state.items() if "num_batches_tracked" not in k}, str(p := tmp_path / "old.safetensors"))
    assert _same_weights(load_fid_inception(p), state)


def test_inception_refuses_pickled_code_and_non_state_dicts(tmp_path):
    torch.save({"net": NotAStateDict()}, p := tmp_path / "evil.pth")
    with pytest.warns(UserWarning), pytest.raises(GenlabError, match="refusing to read the FID Inception weights file .*could run code"):
        load_fid_inception(p)
    torch.save([torch.zeros(1)], p2 := tmp_path / "list.pth")
    with pytest.warns(UserWarning), pytest.raises(GenlabError, match="not a state dict"):
        load_fid_inception(p2)
    (p3 := tmp_path / "truncated.safetensors").write_bytes(b"\x10\x00\x00")
    with pytest.raises(GenlabError, match="corrupt or truncated"):
        load_fid_inception(p3)


def test_inception_forward_shapes_and_grayscale(inception_files):
    _, state = inception_files
    model = FIDInceptionV3().eval()
    model.load_state_dict(state)
    x = images(2, c=1, size=28)
    with torch.no_grad():
        out = extract(model, x)
        rgb = model.features(x.repeat(1, 3, 1, 1))
    assert out["features"].shape == (2, 2048) and out["logits"].shape == (2, 1008)
    assert torch.allclose(out["features"], rgb, atol=1e-5)
    # logits without bias by default (the original Inception Score code), with bias on request
    assert torch.allclose(out["logits"], out["features"] @ model.fc.weight.T, atol=1e-4)
    with pytest.raises(ValueError, match="uint8 images"):
        model.features(torch.zeros(1, 3, 32, 32))
    with pytest.raises(ValueError, match=r"1 or 3"):
        model.features(images(1, c=2, size=32))
