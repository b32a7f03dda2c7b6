"""Datasets derived from Fashion-MNIST: determinism and cache, pairing, domains, scene layouts and captions."""

import re

import numpy as np
import pytest
import torch
from conftest import run_cli
from PIL import Image

from genlab.data import DATASET_CONDITIONS, load_dataset
from genlab.data import derived as D
from genlab.data import scenes as S
from genlab.data.images import load_idx_dataset
from genlab.errors import UsageError

pytestmark = pytest.mark.skipif(not D.source_fingerprint("test"), reason="Fashion-MNIST IDX files not installed")


@pytest.fixture(scope="module", autouse=True)
def cache(tmp_path_factory):
    """A private cache for this module's builds."""
    path = tmp_path_factory.mktemp("genlab-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GENLAB_CACHE", str(path))
        yield path / "derived"


@pytest.fixture(scope="module")
def scenes_train():
    return S.scenes("train", n=300)


@pytest.fixture(scope="module")
def scenes_test():
    return load_dataset("scenes", "test")  # full size (2,000): every held-out pair must be in it


def source_test(n):
    x, y = load_idx_dataset("fashion-mnist", "test")
    return x[:n, 0], y[:n]


# --- determinism and cache ---


def test_same_seed_same_bytes_and_cache_hit_is_identical(cache):
    a = D.fmnist_color("test", limit=300, cache=False)
    b = D.fmnist_color("test", limit=300)  # built and written
    c = D.fmnist_color("test", limit=300)  # read back
    assert len(list(cache.glob("fmnist-color-test-*.safetensors"))) == 1
    for d in (b, c):
        assert torch.equal(a.x, d.x) and torch.equal(a.y, d.y) and torch.equal(a.extra["color"], d.extra["color"])
    other = D.fmnist_color("test", limit=300, seed=1, cache=False)
    assert not torch.equal(a.extra["color"], other.extra["color"])


def test_scenes_deterministic_through_cache():
    a = S.scenes("test", n=40, size=32, cache=False)
    b = S.scenes("test", n=40, size=32)
    c = S.scenes("test", n=40, size=32)
    for d in (b, c):
        assert torch.equal(a.x, d.x) and a.extra_text == d.extra_text
        assert all(torch.equal(a.extra[k], d.extra[k]) for k in a.extra)


def test_cache_key_covers_parameters_and_damaged_files_are_rebuilt(cache):
    keys = {D.cache_key("scenes", "test", {"size": s, "n": 40, "seed": 0}) for s in (32, 64)}
    assert len(keys) == 2
    assert D.cache_key("x", "test", {"a": 1}) == D.cache_key("x", "test", {"a": 1})
    ref = S.scenes("test", n=40, size=32)
    (path,) = cache.glob(f"scenes-test-{D.cache_key('scenes', 'test', {'size': 32, 'n': 40, 'seed': 0})[:16]}*")
    path.write_bytes(path.read_bytes()[:1000])  # truncated, as by a crash without the atomic rename
    again = S.scenes("test", n=40, size=32)
    assert torch.equal(ref.x, again.x) and path.stat().st_size > 1000


def test_unwritable_cache_still_loads(tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv("GENLAB_CACHE", str(blocker))
    with pytest.warns(UserWarning, match="could not cache fmnist-color/test"):
        d = D.fmnist_color("test", limit=20)
    assert len(d) == 20 and not list(tmp_path.glob("**/*.safetensors*"))


# --- fmnist-color and edges ---


def test_fmnist_color_is_the_tinted_garment():
    d = D.fmnist_color("test", limit=200)
    grey, y = source_test(200)
    assert d.x.shape == (200, 3, 32, 32) and d.x.dtype == torch.uint8 and torch.equal(d.y, y)
    assert torch.equal(torch.from_numpy(D.untint(d.x.numpy()))[:, 2:30, 2:30], grey)  # exact: a 255 channel
    assert torch.equal(d.x, torch.from_numpy(D.tint(D.untint(d.x.numpy()), d.extra["color"].numpy())))
    assert d.extra["color"].dtype == torch.int64 and set(d.extra["color"].tolist()) == set(range(len(D.COLORS)))
    assert len(D.COLORS) == len(D.COLOR_RGB) == 8


def test_edge_map_comes_from_its_own_image():
    d = D.edges2fmnist("test", limit=200)
    assert d.x.shape == d.extra["x_src"].shape == (200, 1, 32, 32)
    assert torch.equal(d.extra["x_src"][:, 0], torch.from_numpy(D.edge_map(d.x[:, 0].numpy())))
    assert set(d.extra["x_src"].unique().tolist()) == {0, 255}
    # edges lie on the garment's outline: every edge pixel is next to a garment pixel
    near = torch.nn.functional.max_pool2d(d.x.float(), 3, 1, 1) > 0
    assert near[d.extra["x_src"] > 0].all()
    shuffled = torch.from_numpy(D.edge_map(d.x[:, 0].roll(1, 0).numpy()))
    assert not torch.equal(shuffled, d.extra["x_src"][:, 0])


def test_edges2fmnist_color_is_one_to_many():
    d = D.edges2fmnist_color("test", sources=50)
    k = D.PAIR_COLORS
    assert len(d) == 50 * k and d.x.shape[1] == 3 and d.extra["x_src"].shape[1] == 1
    grey = torch.from_numpy(D.untint(d.x.numpy()))
    assert torch.equal(d.extra["x_src"][:, 0], torch.from_numpy(D.edge_map(grey.numpy())))
    groups = lambda t: t.reshape(50, k, *t.shape[1:])  # noqa: E731
    for t in (d.extra["x_src"], grey, d.y):
        g = groups(t)
        assert (g == g[:, :1]).all()  # one edge map, one garment, one class per group
    colors = groups(d.extra["color"])
    assert all(len(set(row)) == k for row in colors.tolist())  # k different colours of the same edge map


# --- unpaired ---


def test_unpaired_domains():
    d = load_dataset("unpaired:Sneaker,ankle-boot", "test")
    assert d.spec.conditions == ("y", "domain")
    dom = d.extra["domain"]
    assert (dom == 0).sum() == (dom == 1).sum() == 1000
    assert set(d.y[dom == 0].tolist()) == {7} and set(d.y[dom == 1].tolist()) == {9}
    a = {bytes(im.numpy()) for im in d.x[dom == 0]}
    b = {bytes(im.numpy()) for im in d.x[dom == 1]}
    assert not a & b
    assert torch.equal(load_dataset("unpaired", "test").x, d.x)
    assert torch.equal(load_dataset("unpaired:7,9", "test").x, d.x)
    assert torch.equal(load_dataset("unpaired:bag,trouser", "test").y[:3], torch.tensor([8, 8, 8]))


@pytest.mark.parametrize("arg, message", [
    ("sneaker,sneaker", "different classes; got 'Sneaker' twice"),
    ("7,sneaker", "twice"),
    ("snekaer,bag", "unknown class 'snekaer'; expected one of: t-shirt/top, trouser, .*ankle-boot"),
    ("sneaker", "takes two classes"),
    ("sneaker,bag,coat", "takes two classes"),
    ("sneaker,", "takes two classes"),
    ("10,bag", "unknown class '10'"),
])
def test_unpaired_errors(arg, message):
    with pytest.raises(UsageError, match=message):
        load_dataset(f"unpaired:{arg}", "test")


# --- scenes ---


def test_scene_objects_lie_in_their_boxes_and_masks(scenes_train):
    d = scenes_train
    n, K, H, W = d.extra["masks"].shape
    masks, boxes = d.extra["masks"].bool(), d.extra["boxes"]
    present = d.extra["obj_classes"] >= 0
    assert (present.sum(1) >= 1).all() and (present.sum(1) <= S.MAX_OBJECTS).all()
    assert (boxes[~present] == -1).all() and not masks[~present].any()
    assert (masks.sum(1) <= 1).all()  # objects never overlap
    assert torch.equal(masks.any(1), d.x.amax(1) > 0)  # the canvas is non-black exactly on the masks
    ys, xs = torch.arange(H).view(1, 1, H, 1) + 0.5, torch.arange(W).view(1, 1, 1, W) + 0.5
    b = (boxes * H).view(n, K, 4, 1, 1)
    inside = (xs > b[:, :, 0]) & (xs < b[:, :, 2]) & (ys > b[:, :, 1]) & (ys < b[:, :, 3])
    assert not (masks & ~inside).any()  # mask pixels within the box
    for i, j in present.nonzero().tolist()[:200]:  # and the box is tight
        rows, cols = masks[i, j].any(1).nonzero(), masks[i, j].any(0).nonzero()
        assert boxes[i, j].tolist() == [cols.min() / W, rows.min() / H, (cols.max() + 1) / W, (rows.max() + 1) / H]
    # every object sits in its cell, in its colour
    cells = d.extra["obj_cells"]
    cx, cy = (boxes[..., 0] + boxes[..., 2]) / 2, (boxes[..., 1] + boxes[..., 3]) / 2
    assert torch.equal(((cy >= 0.5).long() * 2 + (cx >= 0.5).long())[present], cells[present])
    for i, j in present.nonzero().tolist()[:200]:
        pix = d.x[i][:, masks[i, j]].numpy()  # (3, P)
        color = d.extra["obj_colors"][i, j].item()
        expected = D.tint(pix.max(0)[None, :, None], np.array([color]))[0, :, :, 0]
        assert np.array_equal(pix, expected)


def test_label_map_agrees_with_masks(scenes_train):
    d = scenes_train
    masks, cls = d.extra["masks"].long(), d.extra["obj_classes"]
    expected = (masks * (cls.clamp(min=0) + 1)[:, :, None, None]).sum(1)
    assert torch.equal(d.extra["label_map"].long(), expected)
    assert torch.equal(d.y, cls[:, 0])  # y: the first object's class (reading order of the cells)


def parse_caption(text):
    colors, names = "|".join(D.COLORS), "|".join(sorted(S.CAPTION_NAMES, key=len, reverse=True))
    objects = re.findall(rf"\ban? (small )?({colors}) ({names})\b", text)
    cells = re.findall(r"(top|bottom) (left|right)", text)
    assert len(objects) == len(cells), text
    return [(S.CAPTION_NAMES.index(n), D.COLORS.index(c), S.CELLS.index(f"{v} {h}")) for (_, c, n), (v, h)
            in zip(objects, cells)]


def test_captions_match_the_objects(scenes_train):
    d = scenes_train
    texts = d.extra_text["text"]
    assert len(texts) == len(d) and len({t.split()[0] for t in texts}) > 1  # several templates
    for i, text in enumerate(texts):
        present = d.extra["obj_classes"][i] >= 0
        objs = list(zip(*(d.extra[k][i][present].tolist() for k in ("obj_classes", "obj_colors", "obj_cells"))))
        assert parse_caption(text) == objs
    assert S.make_caption([(8, 1, 0, True), (7, 5, 3, False)], 0) == (
        "a small orange bag at the top left and a blue sneaker at the bottom right")


def test_heldout_pairs_absent_from_training_present_in_test(scenes_train, scenes_test):
    def pairs(d):
        present = d.extra["obj_classes"] >= 0
        return list(zip(d.extra["obj_classes"][present].tolist(), d.extra["obj_colors"][present].tolist()))

    held = set(S.HELDOUT_PAIRS)
    assert len(held) == 8 and not held & set(pairs(scenes_train)) and not scenes_train.extra["heldout"].any()
    assert held <= set(pairs(scenes_test))
    flags = scenes_test.extra["heldout"]
    for i in range(len(scenes_test)):
        present = scenes_test.extra["obj_classes"][i] >= 0
        objs = zip(scenes_test.extra["obj_classes"][i][present].tolist(),
                   scenes_test.extra["obj_colors"][i][present].tolist())
        assert int(flags[i]) == int(any(p in held for p in objs))
    assert 0.4 < flags.float().mean() < 0.6


def test_scene_sizes(scenes_test):
    assert scenes_test.x.shape == (2000, 3, 64, 64)
    small = S.scenes("test", size=32, n=20)
    assert small.x.shape == (20, 3, 32, 32) and small.extra["masks"].shape == (20, 3, 32, 32)
    for bad in (15, 12, 33, 130):
        with pytest.raises(UsageError, match="even number of pixels from 16 to 128"):
            load_dataset("scenes", "test", image_size=bad)
    with pytest.raises(UsageError, match="fmnist-color is 32x32"):
        load_dataset("fmnist-color", "test", image_size=64)


# --- batches and specs ---


def test_batch_keys_and_dtypes(scenes_test):
    idx = torch.tensor([5, 0, 7])
    b = scenes_test.batch(idx)
    assert set(b) == {"x", "y", "boxes", "masks", "label_map", "obj_classes", "obj_colors", "obj_cells", "heldout",
                      "text"}
    assert b["x"].dtype == torch.float32 and b["x"].shape == (3, 3, 64, 64) and b["x"].min() >= -1
    assert b["masks"].dtype == torch.float32 and b["masks"].shape == (3, 3, 64, 64)
    assert set(b["masks"].unique().tolist()) <= {0.0, 1.0}
    assert b["label_map"].dtype == torch.int64 and b["label_map"].shape == (3, 64, 64)
    assert b["boxes"].dtype == torch.float32 and b["boxes"].shape == (3, 3, 4)
    for k in ("y", "obj_classes", "obj_colors", "obj_cells", "heldout"):
        assert b[k].dtype == torch.int64
    texts = scenes_test.extra_text["text"]
    assert b["text"] == [texts[5], texts[0], texts[7]]
    sub = scenes_test.subset(idx)
    assert sub.extra_text["text"] == b["text"] and torch.equal(sub.batch(torch.arange(3))["x"], b["x"])
    assert scenes_test.batch(torch.tensor(4))["text"] == texts[4]
    kept = scenes_test.keep_classes([7])
    assert (kept.y == 7).all() and kept.extra_text["text"] == [t for t, y in zip(texts, scenes_test.y) if y == 7]

    e = D.edges2fmnist_color("test", sources=10).batch(torch.arange(4))
    assert e["x"].shape == (4, 3, 32, 32) and e["x_src"].shape == (4, 1, 32, 32)
    assert e["x_src"].dtype == torch.float32 and set(e["x_src"].unique().tolist()) <= {-1.0, 1.0}
    assert e["color"].dtype == torch.int64


@pytest.mark.parametrize("name", ["fmnist-color", "edges2fmnist", "edges2fmnist-color", "unpaired:A,B", "scenes"])
def test_spec_conditions(name, scenes_test):
    d = {"fmnist-color": lambda: D.fmnist_color("test", limit=50),
         "edges2fmnist": lambda: D.edges2fmnist("test", limit=50),
         "edges2fmnist-color": lambda: D.edges2fmnist_color("test", sources=10),
         "unpaired:A,B": lambda: load_dataset("unpaired", "test"),
         "scenes": lambda: scenes_test}[name]()
    assert d.spec.conditions == DATASET_CONDITIONS[name]
    assert d.spec.classes == D.FMNIST_CLASSES and d.spec.shape[0] in (1, 3)


# --- genlab data show ---


@pytest.mark.parametrize("name", ["fmnist-color", "edges2fmnist", "edges2fmnist-color", "unpaired:bag,coat",
                                  "scenes", "fashion-mnist", "ring8"])
def test_data_show_writes_a_png(tmp_path, capsys, name):
    out = tmp_path / "show.png"
    assert run_cli("data", "show", name, "--split", "test", "--n", "4", "--out", out) == 0
    with Image.open(out) as im:
        assert im.format == "PNG" and im.width > 100 and im.height > 100
    printed = capsys.readouterr().out
    assert printed.startswith(f"{name}: x (") and "wrote" in printed


def test_data_show_errors(tmp_path, capsys):
    assert run_cli("data", "show", "scenes", "--image-size", "15", "--out", tmp_path / "a.png") == 2
    assert run_cli("data", "show", "unpaired:bag", "--out", tmp_path / "a.png") == 2
    assert run_cli("data", "show", "scenes", "--out", tmp_path / "a.jpg") == 2
    assert run_cli("data", "show", "fmnist-colour", "--out", tmp_path / "a.png") == 2
    assert "unknown dataset 'fmnist-colour'" in capsys.readouterr().err


def test_unpaired_edges_garments_hides_pairs_in_train_and_keeps_them_in_test():
    e = load_dataset("edges2fmnist", "test")
    t = load_dataset("unpaired:edges,garments", "test")
    n = len(e)
    assert t.name == "unpaired:edges,garments" and len(t) == 2 * n
    assert torch.equal(t.x[:n], e.extra["x_src"]) and torch.equal(t.x[n:], e.x)  # row i pairs with row n + i
    assert torch.equal(t.extra["domain"], torch.arange(2 * n) // n)
    tr = load_dataset("unpaired:Edges,Garments", "train")
    half = len(tr) // 2
    assert torch.equal(tr.extra["domain"], torch.arange(2 * half) // half)
    full = load_dataset("edges2fmnist", "train")
    # no training garment gives both its edge map (domain A) and itself (domain B)
    from genlab.data.derived import edge_map

    a_edges = {bytes(v) for v in tr.x[:200].numpy().reshape(200, -1)}
    b_edges = {bytes(v) for v in edge_map(tr.x[half:].numpy()[:, 0])[:, None].reshape(len(tr) - half, -1)}
    assert a_edges and not a_edges & b_edges
    assert len(full) == len(tr)
