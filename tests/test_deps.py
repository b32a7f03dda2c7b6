"""Run dependencies (a frozen base run under adapters), adapter-only checkpoints, and train.init_from."""

import json
import shutil
import types
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from conftest import FAST_TRAIN, run_cli
from torch import nn

from genlab.errors import GenlabError
from genlab.models import FAMILIES
from genlab.training.checkpoint import latest_checkpoint
from genlab.training.run import load_run

BASE = ["vae", "--data", "ring8", "model.mlp_hidden=16", "model.latent_dim=2", *FAST_TRAIN, "train.trackers=none"]


# A minimal adapter family, as LoRA or ControlNet will be: a frozen base run plus a small trainable part.
@dataclass
class AdapterConfig:
    base: str = ""  # a trained vae run
    lr: float = 1e-2  # Adam learning rate of the adapter


class Adapted(nn.Module):
    def __init__(self, cfg, spec, deps):
        super().__init__()
        self.cfg, self.spec = cfg, spec
        self.base = deps["base"].model  # frozen: registered so it moves with the model, kept out of checkpoints
        self.adapter = nn.Linear(4, 2)

    def forward(self, x):
        return self.adapter(self.base.encoder(x))


def _train_step(model, batch, opts, ctx):
    def loss(mb, rng):
        value = F.mse_loss(model(mb["x"]), mb["x"])
        return value, {"loss": value.item()}

    return ctx.update("adapter", loss)


adapter = types.ModuleType("adapter")
adapter.__dict__.update(
    Config=AdapterConfig, SAMPLERS=(), SAMPLE_OPTIONS=(), DEPS=("base",), DEP_FAMILIES={"base": ("vae",)},
    needs=lambda cfg: ("x",), build=lambda cfg, spec, deps: Adapted(cfg, spec, deps),
    make_optimizers=lambda model, cfg: {"adapter": torch.optim.Adam(model.adapter.parameters(), lr=cfg.lr)},
    train_step=_train_step,
)


@pytest.fixture
def with_adapter(monkeypatch):
    monkeypatch.setitem(FAMILIES, "adapter", adapter)


@pytest.fixture
def base_run(tmp_path):
    out = tmp_path / "base"
    assert run_cli("train", *BASE, "train.steps=3", "--out", out) == 0
    return out


def _adapter_args(base, out, *extra):
    return ["train", "adapter", "--data", "ring8", f"model.base={base}", *FAST_TRAIN, "train.trackers=none",
            "train.ema_decay=0.9", *extra, "--out", out]


def test_adapter_only_checkpoints_and_the_base_stays_frozen(tmp_path, base_run, with_adapter):
    out = tmp_path / "ad"
    assert run_cli(*_adapter_args(base_run, out, "train.steps=3")) == 0
    ck = latest_checkpoint(out / "checkpoints")
    assert sorted(ck.tensors) == ["ema/adapter.bias", "ema/adapter.weight", "model/adapter.bias", "model/adapter.weight",
                                  "optim/adapter/0/exp_avg", "optim/adapter/0/exp_avg_sq", "optim/adapter/0/step",
                                  "optim/adapter/1/exp_avg", "optim/adapter/1/exp_avg_sq", "optim/adapter/1/step",
                                  "rng/torch_cpu"]
    rec = ck.meta["deps"]["base"]
    assert rec["source_step"] == 3 and rec["family"] == "vae" and len(rec["sha256"]) == 64
    base = load_run(base_run)  # EMA weights: what the adapter was trained on
    run = load_run(out)
    for k, v in base.model.state_dict().items():
        assert torch.equal(run.model.base.state_dict()[k], v), k  # not trained, not averaged
    # the run stays loadable when the base run's folder is gone
    shutil.rmtree(base_run)
    again = load_run(out)
    assert torch.equal(again.model.adapter.weight, run.model.adapter.weight)


def test_missing_or_changed_stored_dependency_is_named(tmp_path, base_run, with_adapter):
    out = tmp_path / "ad"
    assert run_cli(*_adapter_args(base_run, out, "train.steps=2")) == 0
    stored = out / "deps" / "base"
    # another valid run in its place: refused by the recorded hash
    other = tmp_path / "other"
    assert run_cli("train", *BASE, "train.steps=3", "train.seed=7", "--out", other) == 0
    shutil.move(stored, tmp_path / "stash")
    shutil.copytree(other, stored)
    with pytest.raises(GenlabError, match="dependency 'base' .* was changed"):
        load_run(out)
    shutil.rmtree(stored)
    with pytest.raises(GenlabError, match="dependency 'base' .* is missing"):
        load_run(out)
    shutil.move(tmp_path / "stash", stored)
    load_run(out)


def test_resume_after_the_source_changed_is_an_error(tmp_path, base_run, with_adapter, capsys):
    out = tmp_path / "ad"
    assert run_cli(*_adapter_args(base_run, out, "train.steps=2")) == 0
    assert run_cli("train", *BASE, "train.steps=5", "--out", base_run, "--resume") == 0  # the base trains on
    assert run_cli(*_adapter_args(base_run, out, "train.steps=4"), "--resume") == 1
    err = capsys.readouterr().err
    assert "model.base=" in err and "changed since this run started" in err
    # pointing at the copy the run keeps (or at the source moved elsewhere, unchanged) works
    assert run_cli(*_adapter_args(out / "deps" / "base", out, "train.steps=4"), "--resume") == 0
    assert latest_checkpoint(out / "checkpoints").step == 4


def test_dependency_of_the_wrong_family_is_refused(tmp_path, with_adapter, capsys):
    ae = tmp_path / "ae"
    assert run_cli("train", "ae", "--data", "ring8", "model.mlp_hidden=8", *FAST_TRAIN, "train.steps=1", "--out", ae) == 0
    assert run_cli(*_adapter_args(ae, tmp_path / "ad", "train.steps=1")) == 2
    assert "is a 'ae' run; adapter needs one of: vae" in capsys.readouterr().err


def test_init_from_starts_from_another_runs_weights(tmp_path, base_run, capsys):
    out = tmp_path / "ft"
    assert run_cli("train", *BASE, "train.steps=1", "train.ema_decay=0", "model.lr=1e-12",
                   f"train.init_from={base_run}", "--out", out) == 0
    source = load_run(base_run)  # its EMA weights
    tuned = latest_checkpoint(out / "checkpoints")
    for k, v in source.model.state_dict().items():
        assert torch.allclose(tuned.tensors[f"model/{k}"], v, atol=1e-8), k
    assert json.loads((out / "run.json").read_text())["init_from"]["source_step"] == 3
    assert tuned.meta["init_from"]["loaded"] == len(source.model.state_dict())
    assert run_cli("train", *BASE, "train.steps=1", "model.mlp_hidden=32", f"train.init_from={base_run}",
                   "--out", tmp_path / "bad") == 2
    assert "shapes differ" in capsys.readouterr().err
