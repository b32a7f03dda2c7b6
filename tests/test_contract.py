"""The family contract, checked for EVERY family in the registry: a few-step run, exact resume, gradient
accumulation (b x 2 micro-batches == one batch of 2b) and 2 processes (gloo) == 1 process, plus the layering
rule that lower layers import nothing above them."""

import ast
import json
from pathlib import Path

import pytest
import torch
from conftest import FAST_TRAIN, run_cli, run_torchrun

from genlab.config import DataConfig, RunConfig
from genlab.models import FAMILIES
from genlab.training.checkpoint import latest_checkpoint
from genlab.training.data import eval_conditions, load_data

# Tiny settings per family, on the ring8 toy (MLP networks) unless TINY_DATA names another dataset (image-to-
# image families need paired or domain-labelled images): seconds per run.
TINY = {
    "pix2pix": ["model.base=4", "model.depth=2", "model.d_layers=1", "model.dropout=0.5"],
    "cyclegan": ["model.base=4", "model.n_blocks=1", "model.d_layers=1", "model.pool_size=3", "model.losses=full+identity", "model.norm=none"],
    "bicyclegan": ["model.g_channels=4", "model.e_channels=4", "model.d_channels=4", "model.d_layers=1", "model.latent_dim=2"],
    "stargan": ["model.g_channels=4", "model.g_blocks=1", "model.d_channels=4", "model.d_layers=2", "model.d_steps=2"],
    "ddpm": ["model.mlp_hidden=16", "model.mlp_layers=1", "model.sample_steps=3"],
    "classifier": ["model.base_channels=8", "model.channel_mult=[1,2]", "model.timesteps=50"],
    "distill": ["model.teacher_steps=4"],  # its teacher: TINY_DEPS below
    "ddgan": ["model.mlp_hidden=16", "model.mlp_layers=1", "model.latent_dim=4", "model.num_steps=2"],
    "consistency": ["model.mode=ct", "model.mlp_hidden=16", "model.mlp_layers=1", "model.ct_total_steps=4", "model.sample_steps=2"],
    "vae": ["model.mlp_hidden=16", "model.latent_dim=2"],
    "ae": ["model.mlp_hidden=16", "model.latent_dim=2", "model.corruption=gaussian"],
    "gan": ["model.mlp_hidden=16", "model.latent_dim=4", "model.pack=2"],
    "vqvae": ["model.mlp_hidden=16", "model.codebook_size=8", "model.code_dim=2"],
    "gmm": ["model.n_components=8", "model.max_fit=2000"],
    "flow": ["model.mlp_hidden=16", "model.point_layers=4"],
    "pixelcnn": ["model.channels=8", "model.layers=1", "model.kernel=3", "model.embed_dim=4"],
    "autoencoder-kl": ["model.channels=4", "model.downsample=2", "model.latent_channels=2", "model.disc_start=1", "model.disc_channels=4"],
    "ldm": ["model.cond=class", "model.base_channels=64", "model.channel_mult=[1]", "model.attn_resolutions=[4]", "model.sample_steps=2"],  # first stage: TINY_DEPS; width 64 so GroupNorm groups hold 2 channels (1 per group zeroes bias gradients, which Adam turns into noise)
    "lcm": ["model.skip=250", "model.sample_steps=2"],  # its ldm teacher (and that one's first stage): TINY_DEPS
    "progan": ["model.channels=8", "model.min_channels=8", "model.latent_dim=8", "model.phase_steps=1", "model.mbstd_group=2"],
    "stylegan": ["model.channels=8", "model.min_channels=8", "model.latent_dim=8", "model.w_dim=8", "model.mapping_layers=2", "model.mbstd_group=2", "model.r1_gamma=1", "model.pl_weight=1", "model.lr=2e-4"],
}


TINY_DATA: dict[str, str] = {"cyclegan": "unpaired:sneaker,ankle-boot", "classifier": "digits", "pix2pix": "edges2fmnist", "bicyclegan": "edges2fmnist-color", "stargan": "fmnist-color", "progan": "digits", "stylegan": "digits", "autoencoder-kl": "digits", "ldm": "digits", "lcm": "digits"}  # family -> dataset for the checks below (default ring8)


# Families trained on top of other runs (a teacher, an autoencoder, a base model): config key -> (family, extra
# overrides) of a tiny run trained once per test session, with that family's TINY settings on the dependent
# family's dataset; `_args` passes key=<its run directory>. See /work/briefs/contract-deps.md.
TINY_DEPS: dict[str, dict[str, tuple[str, list[str]]]] = {
    "distill": {"model.teacher": ("ddpm", ["train.steps=3"])},
    "ldm": {"model.autoencoder": ("autoencoder-kl", ["train.steps=3"])},
    # lcm: a v-prediction teacher; an eps one turns float rounding into errors ~sigma_max (157) x larger (docs/lcm.md)
    "lcm": {"model.teacher": ("ldm", ["train.steps=3", "model.prediction=v"])},
}
_DEP_ROOT: list[Path] = []  # the session's folder for TINY_DEPS runs (set by the fixture below)
_DEP_RUNS: dict[tuple[str, str], Path] = {}


@pytest.fixture(scope="session", autouse=True)
def _tiny_deps_root(tmp_path_factory):
    _DEP_ROOT.append(tmp_path_factory.mktemp("tiny-deps"))
    yield
    _DEP_ROOT.clear()
    _DEP_RUNS.clear()


def _dep_overrides(family) -> list[str]:
    """key=RUN for each TINY_DEPS entry of `family`, training the dependency the first time it is asked for."""
    out = []
    for key, (dep, extra) in TINY_DEPS.get(family, {}).items():
        run = _DEP_RUNS.get((family, key))
        if run is None:
            run = _DEP_ROOT[0] / f"{family}-{key.replace('.', '-')}"
            assert run_cli("train", dep, "--data", TINY_DATA.get(family, "ring8"), *TINY[dep], *_dep_overrides(dep), *FAST_TRAIN,
                           "train.trackers=none", *extra, "--out", run) == 0
            _DEP_RUNS[(family, key)] = run
        out.append(f"{key}={run}")
    return out


def test_every_family_has_tiny_settings():
    assert set(TINY) == set(FAMILIES), "add the new family to TINY: every family must pass these checks"


def _args(family, out, *extra):
    return ["train", family, "--data", TINY_DATA.get(family, "ring8"), *TINY[family], *_dep_overrides(family), *FAST_TRAIN, "train.trackers=none", *extra, "--out", out]


def _final(run):
    c = latest_checkpoint(run / "checkpoints")
    return c.step, {k: v for k, v in c.tensors.items() if not k.startswith("rng/")}


def _losses(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _assert_same(ta, tb, atol):
    assert ta.keys() == tb.keys()
    for k in ta:
        if atol == 0:
            assert torch.equal(ta[k], tb[k]), k
        else:
            assert torch.allclose(ta[k], tb[k], atol=atol, rtol=0), (k, (ta[k] - tb[k]).abs().max())


@pytest.mark.parametrize("family", list(FAMILIES))
def test_smoke_run_writes_a_loadable_sampleable_run(tmp_path, family):
    import genlab

    out = tmp_path / "r"
    assert run_cli(*_args(family, out, "train.steps=3")) == 0
    info = json.loads((out / "run.json").read_text())
    shape = list(load_data(RunConfig(data=DataConfig(name=TINY_DATA.get(family, "ring8"))), "test").spec.shape)
    assert info["status"] == "done" and info["spec"]["shape"] == shape
    run = genlab.load(out)
    if FAMILIES[family].SAMPLERS:
        cond = eval_conditions(run.config, FAMILIES[family].needs(run.config.model), 5)
        x = run.sample(5, seed=1, cond=cond)
        assert x.shape == (5, *shape) and torch.isfinite(x).all()
        assert torch.equal(x, run.sample(5, seed=1, cond=cond))


@pytest.mark.parametrize("family", list(FAMILIES))
def test_resume_continues_exactly(tmp_path, family):
    common = ["train.ckpt_every=2", "train.ema_decay=0.9", "train.warmup_steps=2"]
    assert run_cli(*_args(family, tmp_path / "full", *common, "train.steps=4")) == 0
    assert run_cli(*_args(family, tmp_path / "part", *common, "train.steps=2")) == 0
    assert run_cli(*_args(family, tmp_path / "part", *common, "train.steps=4"), "--resume") == 0
    sa, ta = _final(tmp_path / "full")
    sb, tb = _final(tmp_path / "part")
    assert sa == sb
    _assert_same(ta, tb, atol=0)  # bit-identical on CPU
    assert [r.get("loss") for r in _losses(tmp_path / "full")] == [r.get("loss") for r in _losses(tmp_path / "part")]


@pytest.mark.parametrize("family", list(FAMILIES))
def test_grad_accumulation_equals_the_bigger_batch(tmp_path, family):
    """2 micro-batches of 8 == one batch of 16: same samples, same noise, D updated on the whole batch first."""
    common = ["train.steps=3", "train.ema_decay=0"]
    assert run_cli(*_args(family, tmp_path / "big", *common, "train.batch_size=16")) == 0
    assert run_cli(*_args(family, tmp_path / "acc", *common, "train.batch_size=8", "train.grad_accum=2")) == 0
    _, ta = _final(tmp_path / "big")
    _, tb = _final(tmp_path / "acc")
    _assert_same({k: v for k, v in ta.items() if k.startswith("model/")},
                 {k: v for k, v in tb.items() if k.startswith("model/")}, atol=2e-6)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_two_processes_equal_one_process(tmp_path, family):
    """torchrun 2 x batch b (gloo on CPU) == 1 process x batch 2b, weights and optimizer state."""
    common = ["train.steps=3", "train.ema_decay=0"]
    port = 29600 + list(FAMILIES).index(family)
    run_torchrun(tmp_path / "two", *_args(family, tmp_path / "unused", *common, "train.batch_size=4")[1:-2], port=port)
    assert run_cli(*_args(family, tmp_path / "one", *common, "train.batch_size=8")) == 0
    _, t1 = _final(tmp_path / "one")
    _, t2 = _final(tmp_path / "two")
    assert json.loads((tmp_path / "two" / "run.json").read_text())["processes"] == (1 if family == "gmm" else 2)
    _assert_same({k: v for k, v in t1.items() if k.startswith(("model/", "optim/"))},
                 {k: v for k, v in t2.items() if k.startswith(("model/", "optim/"))}, atol=1e-5)


# ---------------------------------------------------------------------------------------------- layering

ROOT = Path(__file__).resolve().parent.parent / "genlab"
# package -> genlab packages/modules it must not import (DESIGN.md: imports flow one way)
FORBIDDEN = {
    "data": ("nn", "models", "samplers", "metrics", "training", "report", "cli", "anomaly"),
    "nn": ("data", "models", "samplers", "metrics", "training", "report", "cli", "anomaly"),
    "samplers": ("data", "nn", "models", "metrics", "training", "report", "cli", "anomaly"),
    "metrics": ("nn", "models", "samplers", "training", "report", "cli", "anomaly"),
    "models": ("training", "report", "cli", "metrics", "anomaly"),
    "training": ("report", "cli", "anomaly"),
}


def _imports(path: Path) -> set[str]:
    """genlab sub-packages a file imports, lazily (inside functions) or not."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
            [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
        for n in names:
            parts = n.split(".")
            if parts[0] == "genlab" and len(parts) > 1:
                out.add(parts[1])
    return out


@pytest.mark.parametrize("package", list(FORBIDDEN))
def test_lower_layers_import_nothing_above_them(package):
    bad = [f"{p.relative_to(ROOT)} imports genlab.{m}" for p in (ROOT / package).rglob("*.py")
           for m in _imports(p) & set(FORBIDDEN[package])]
    assert not bad, bad


def test_family_files_do_not_import_each_other():
    names = set(FAMILIES)
    for p in (ROOT / "models").glob("*.py"):
        mods = set()
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("genlab.models."):
                mods.add(node.module.split(".")[2])
            if isinstance(node, ast.ImportFrom) and node.module == "genlab.models" and p.name != "__init__.py":
                mods |= {a.name for a in node.names}
        if p.name != "__init__.py":
            assert not (mods & names), f"{p.name} imports family modules {mods & names}"
