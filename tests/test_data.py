import gzip
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from genlab.data import load_dataset, to_float, to_uint8
from genlab.data.images import read_idx
from genlab.data.png import make_grid
from genlab.data.toys import make_toy, toy_modes
from genlab.errors import GenlabError, UsageError


def write_idx(path, array: np.ndarray, compress=False):
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    raw = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if compress else raw)


def make_idx_dir(root, n=12, compress=True):
    rs = np.random.RandomState(0)
    sfx = ".gz" if compress else ""
    for prefix in ("train", "t10k"):
        write_idx(root / f"{prefix}-images-idx3-ubyte{sfx}", rs.randint(0, 256, (n, 28, 28)), compress)
        write_idx(root / f"{prefix}-labels-idx1-ubyte{sfx}", rs.randint(0, 10, (n,)), compress)
    return root


def test_uint8_float_round_trip():
    u = torch.arange(256, dtype=torch.uint8).reshape(1, 1, 16, 16)
    x = to_float(u)
    assert x.min() == -1 and x.max() == 1
    assert torch.equal(to_uint8(x), u)
    assert torch.equal(to_uint8(torch.tensor([-3.0, 3.0])), torch.tensor([0, 255], dtype=torch.uint8))


@pytest.mark.parametrize("compress", [True, False])
def test_idx_dataset_from_data_dir(tmp_path, compress):
    make_idx_dir(tmp_path, compress=compress)
    d = load_dataset("mnist", "test", data_dir=str(tmp_path))
    assert d.x.shape == (12, 1, 28, 28) and d.x.dtype == torch.uint8
    assert d.y.shape == (12,) and d.num_classes == 10


def test_genlab_data_env(tmp_path, monkeypatch):
    (tmp_path / "mnist").mkdir()
    make_idx_dir(tmp_path / "mnist")
    monkeypatch.setenv("GENLAB_DATA", str(tmp_path))
    assert len(load_dataset("mnist")) == 12


def test_missing_dataset_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("GENLAB_DATA", raising=False)
    monkeypatch.setattr("genlab.data.images.idx_search_dirs", lambda name, d="": [tmp_path / name])
    with pytest.raises(GenlabError, match="apt-get install dataset-fashion-mnist"):
        load_dataset("fashion-mnist")


def test_truncated_idx_names_the_file(tmp_path):
    make_idx_dir(tmp_path, compress=False)
    p = tmp_path / "t10k-images-idx3-ubyte"
    p.write_bytes(p.read_bytes()[:-100])
    with pytest.raises(GenlabError, match="t10k-images-idx3-ubyte.*truncated"):
        load_dataset("mnist", "test", data_dir=str(tmp_path))


def test_corrupt_gzip_names_the_file(tmp_path):
    p = tmp_path / "x.gz"
    p.write_bytes(b"\x1f\x8b\x08garbage")
    with pytest.raises(GenlabError, match="x.gz"):
        read_idx(p)


def test_bad_magic(tmp_path):
    p = tmp_path / "bad"
    p.write_bytes(b"\x01\x02\x03\x04" + b"\x00" * 10)
    with pytest.raises(GenlabError, match="bad magic"):
        read_idx(p)


def test_digits():
    tr, te = load_dataset("digits", "train"), load_dataset("digits", "test")
    assert tr.x.shape[1:] == (1, 8, 8) and len(tr) + len(te) == 1797
    assert tr.x.max() == 255 and tr.num_classes == 10


def test_folder_dataset_with_labels(tmp_path):
    for cls in ("cats", "dogs"):
        (tmp_path / cls).mkdir()
        for i in range(3):
            Image.fromarray(np.full((20, 30, 3), 40 * i, np.uint8)).save(tmp_path / cls / f"{i}.png")
    d = load_dataset(f"folder:{tmp_path}", image_size=16)
    assert d.x.shape == (6, 3, 16, 16) and d.classes == ["cats", "dogs"]
    assert d.y.tolist() == [0, 0, 0, 1, 1, 1]
    g = load_dataset(f"folder:{tmp_path}", image_size=8, grayscale=True)
    assert g.x.shape == (6, 1, 8, 8)


def test_folder_corrupt_image_names_it(tmp_path):
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "ok.png")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(GenlabError, match="broken.png"):
        load_dataset(f"folder:{tmp_path}")


def test_unknown_dataset_lists_choices():
    with pytest.raises(UsageError, match="unknown dataset 'fmnist'.*fashion-mnist"):
        load_dataset("fmnist")


def test_ring8_and_grid25_follow_the_protocol():
    means, std = toy_modes("ring8")
    assert std == 0.01 and torch.allclose(means.norm(dim=1), torch.ones(8))
    x = make_toy("ring8", 8000, seed=1)
    d = torch.cdist(x, means).min(1).values
    assert d.mean() < 0.02 and torch.allclose(x.norm(dim=1).mean(), torch.tensor(1.0), atol=1e-2)
    means, std = toy_modes("grid25")
    assert std == 0.05 and sorted(set(means[:, 0].tolist())) == [-4, -2, 0, 2, 4]
    x = make_toy("grid25", 25000, seed=1)
    nearest = torch.cdist(x, means).argmin(1)
    assert torch.bincount(nearest, minlength=25).min() > 800  # all 25 modes, about equally
    resid = x - means[nearest]
    assert resid.std().item() == pytest.approx(0.05, rel=0.05)


def test_toys_are_seeded():
    assert torch.equal(make_toy("moons", 100, seed=3), make_toy("moons", 100, seed=3))
    assert not torch.equal(make_toy("swissroll", 100, seed=3), make_toy("swissroll", 100, seed=4))
    assert not torch.equal(load_dataset("ring8", "train").x[:10], load_dataset("ring8", "test").x[:10])


def test_make_grid_layout():
    imgs = torch.stack([torch.full((1, 2, 2), i, dtype=torch.uint8) for i in range(6)])
    g = make_grid(imgs, ncol=3, pad=1, pad_value=255)
    assert g.shape == (1, 2 * 3 + 1, 3 * 3 + 1)
    assert g[0, 1, 1] == 0 and g[0, 1, 4] == 1 and g[0, 4, 1] == 3
