import json
import os

import pytest
import torch
from conftest import spec_for

from genlab.errors import GenlabError
from genlab.models import vae
from genlab.training import checkpoint as ck


def _model_and_opt():
    torch.manual_seed(0)
    model = vae.build(vae.Config(mlp_hidden=8, latent_dim=2), spec_for([2]), {})
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.randn(4, 2), torch.randn(4, 2))[0].sum().backward()
    opt.step()
    return model, opt


def _save(d, step, model, opt, **kw):
    return ck.save_checkpoint(d, step, family="vae", config={"a": 1}, model_state=model.state_dict(), ema_state=None,
                              optimizers={"model": opt}, **kw)


def test_round_trip_gives_identical_outputs_and_optimizer_state(tmp_path):
    model, opt = _model_and_opt()
    _save(tmp_path, 5, model, opt)
    c = ck.latest_checkpoint(tmp_path)
    assert c.step == 5 and c.meta["family"] == "vae" and c.meta["genlab_version"]
    assert c.meta["format"] == "genlab-checkpoint/2" and c.meta["has_ema"] is False
    other, opt2 = _model_and_opt()
    with torch.no_grad():
        for p in other.parameters():
            p.add_(1.0)
    other.load_state_dict(c.part("model"))
    opt2.load_state_dict(ck.optimizer_from_flat("model", c.tensors, c.meta["optimizers"]["model"]))
    x, eps = torch.randn(3, 2), torch.randn(3, 2)
    assert torch.equal(model(x, eps)[0], other(x, eps)[0])
    s1, s2 = opt.state_dict(), opt2.state_dict()
    assert s1["param_groups"] == s2["param_groups"]
    for k in s1["state"]:
        for name, v in s1["state"][k].items():
            assert torch.equal(torch.as_tensor(v), torch.as_tensor(s2["state"][k][name]))


def test_ema_state_round_trips_under_its_own_prefix(tmp_path):
    model, opt = _model_and_opt()
    ema_state = {k: v + 1 for k, v in model.state_dict().items() if k.startswith("decoder.")}
    ck.save_checkpoint(tmp_path, 1, family="vae", config={}, model_state=model.state_dict(), ema_state=ema_state)
    c = ck.latest_checkpoint(tmp_path)
    assert c.meta["has_ema"] is True and c.meta["optimizers"] == {}
    assert set(c.part("ema")) == set(ema_state)
    for k, v in ema_state.items():
        assert torch.equal(c.part("ema")[k], v), k


def test_format_1_checkpoints_are_still_readable(tmp_path):
    model, opt = _model_and_opt()
    path = _save(tmp_path, 3, model, opt)
    meta = json.loads(path.read_text())
    meta["format"] = "genlab-checkpoint/1"
    path.write_text(json.dumps(meta))
    c = ck.read_checkpoint(path)
    assert c.step == 3 and set(c.part("model")) == set(model.state_dict())


def test_trainable_state_leaves_frozen_tensors_out_and_loads_back(tmp_path):
    model, opt = _model_and_opt()
    frozen = {id(t) for t in model.encoder.parameters()}
    state = ck.trainable_state(model, frozen)
    assert state and not any(k.startswith("encoder.") for k in state)
    assert set(state) == {k for k in model.state_dict() if not k.startswith("encoder.")}
    ck.save_checkpoint(tmp_path, 1, family="vae", config={}, model_state=state)
    c = ck.latest_checkpoint(tmp_path)
    assert not any(k.startswith("encoder.") for k in c.part("model"))
    other, _ = _model_and_opt()
    with torch.no_grad():
        for p in other.parameters():
            p.add_(1.0)
    enc_before = [p.detach().clone() for p in other.encoder.parameters()]
    frozen_other = {id(t) for t in other.encoder.parameters()}
    ck.load_trainable_state(other, c.part("model"), frozen_other, what="test checkpoint")
    for k, v in state.items():
        assert torch.equal(other.state_dict()[k], v), k
    assert all(torch.equal(a, b) for a, b in zip(enc_before, other.encoder.parameters()))  # frozen: untouched
    # a mismatch names the entries
    with pytest.raises(GenlabError, match="test checkpoint does not match.*missing"):
        ck.load_trainable_state(other, c.part("model"), set(), what="test checkpoint")
    bad = dict(c.part("model"))
    bad["log_sigma"] = torch.zeros(5)
    with pytest.raises(GenlabError, match="shapes differ: log_sigma"):
        ck.load_trainable_state(other, bad, frozen_other, what="test checkpoint")


def test_crash_during_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    model, opt = _model_and_opt()
    _save(tmp_path, 1, model, opt)

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(ck, "atomic_write_bytes", boom)  # dies after the tensors, before the JSON record
    with pytest.raises(OSError):
        _save(tmp_path, 2, model, opt)
    assert ck.latest_checkpoint(tmp_path).step == 1
    # the tensors without a JSON record are an orphan that clean_temp_files removes
    assert (tmp_path / "step-0000002.safetensors").exists()
    assert ck.clean_temp_files(tmp_path) == 1
    assert sorted(os.listdir(tmp_path)) == ["step-0000001.json", "step-0000001.safetensors"]


def test_crash_while_writing_tensors_keeps_previous(tmp_path, monkeypatch):
    model, opt = _model_and_opt()
    _save(tmp_path, 1, model, opt)
    monkeypatch.setattr(ck.os, "replace", lambda *a: (_ for _ in ()).throw(OSError("killed")))
    with pytest.raises(OSError):
        _save(tmp_path, 2, model, opt)
    monkeypatch.undo()
    assert ck.latest_checkpoint(tmp_path).step == 1
    assert not (tmp_path / "step-0000002.json").exists()
    assert not [p for p in os.listdir(tmp_path) if ".tmp" in p]  # the failed write left no temp file


def test_clean_temp_files_removes_interrupted_saves_only(tmp_path):
    model, opt = _model_and_opt()
    _save(tmp_path, 1, model, opt)
    (tmp_path / ".step-0000002.safetensors.tmp123").write_bytes(b"partial")
    (tmp_path / ".step-0000002.json.tmp123").write_text("{")
    assert ck.clean_temp_files(tmp_path) == 2
    assert sorted(os.listdir(tmp_path)) == ["step-0000001.json", "step-0000001.safetensors"]
    assert ck.clean_temp_files(tmp_path / "missing") == 0


def test_corrupt_newest_checkpoint_is_skipped(tmp_path):
    model, opt = _model_and_opt()
    _save(tmp_path, 1, model, opt)
    _save(tmp_path, 2, model, opt)
    p = tmp_path / "step-0000002.safetensors"
    data = bytearray(p.read_bytes())
    data[-10] ^= 0xFF
    p.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match="SHA-256"):
        assert ck.latest_checkpoint(tmp_path).step == 1
    with pytest.raises(GenlabError, match="corrupt"):
        ck.read_checkpoint(tmp_path / "step-0000002.json")


def test_garbage_json_is_a_clear_error(tmp_path):
    p = tmp_path / "step-0000001.json"
    p.write_text("{not json")
    with pytest.raises(GenlabError, match="step-0000001.json"):
        ck.read_checkpoint(p)
    p.write_text(json.dumps({"format": "other"}))
    with pytest.raises(GenlabError, match="not a genlab checkpoint"):
        ck.read_checkpoint(p)


def test_keep_prunes_old_checkpoints(tmp_path):
    model, opt = _model_and_opt()
    for s in range(1, 6):
        _save(tmp_path, s, model, opt, keep=2)
    assert [p.name for p in ck.list_checkpoints(tmp_path)] == ["step-0000004.json", "step-0000005.json"]
    assert sorted(p.name for p in tmp_path.glob("*.safetensors")) == ["step-0000004.safetensors", "step-0000005.safetensors"]
    assert not [p for p in os.listdir(tmp_path) if ".tmp" in p]


def test_no_pickle_in_the_code_base():
    """Loading a file can never run code: no pickle, and the one torch.load (third-party .pth weights) is restricted."""
    import pathlib
    import re

    root = pathlib.Path(ck.__file__).resolve().parents[1]
    for f in root.rglob("*.py"):
        text = f.read_text()
        assert not re.search(r"^\s*(import pickle|from pickle|import cloudpickle)", text, re.M), f
        assert "weights_only=False" not in text and "pickle.load" not in text, f
        for call in re.findall(r"torch\.load\([^)]*\)", text):
            assert "weights_only=True" in call, (f, call)
