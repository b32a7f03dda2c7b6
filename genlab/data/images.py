"""Image datasets: IDX files (MNIST-format), scikit-learn digits, and folders of PNG/JPEG files."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import torch

from genlab.errors import GenlabError

IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

INSTALL_HINTS = {
    "fashion-mnist": "install it with `sudo apt-get install dataset-fashion-mnist` (Debian/Ubuntu), or ",
}

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (optionally gzip-compressed); truncated or corrupt files raise an error naming it."""
    path = Path(path)
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise GenlabError(f"cannot read {path}: {e} (the file is corrupt or truncated; reinstall it)") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise GenlabError(f"{path} is not an IDX file (bad magic number); reinstall it")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise GenlabError(f"{path} is truncated (header cut short); reinstall it")
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = header + int(np.prod(dims)) * dtype.itemsize
    if len(raw) != expected:
        raise GenlabError(
            f"{path} is truncated or corrupt: {len(raw)} bytes, expected {expected} for shape {dims}; reinstall it"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)


def idx_search_dirs(name: str, data_dir: str = "") -> list[Path]:
    dirs = []
    if data_dir:
        dirs += [Path(data_dir).expanduser(), Path(data_dir).expanduser() / name]
    if os.environ.get("GENLAB_DATA"):
        dirs += [Path(os.environ["GENLAB_DATA"]) / name, Path(os.environ["GENLAB_DATA"])]
    dirs += [Path("/usr/share/datasets") / name, Path.home() / ".cache" / "genlab" / name]
    return dirs


def _find(dirs: list[Path], stem: str) -> Path | None:
    for d in dirs:
        for candidate in (d / stem, d / f"{stem}.gz"):
            if candidate.is_file():
                return candidate
    return None


def load_idx_dataset(name: str, split: str, data_dir: str = "") -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images (N, 1, 28, 28) and int64 labels (N,) of an MNIST-format dataset.

    A `data_dir` that is given must exist: a mistyped path is an error, never a silent fall-back to the data
    found elsewhere on the search path.
    """
    if data_dir and not Path(data_dir).expanduser().is_dir():
        what = "is a file, not a folder" if Path(data_dir).expanduser().exists() else "does not exist"
        raise GenlabError(
            f"data directory {data_dir} {what} (--data-dir / data.data_dir). To fix: pass the folder that holds "
            f"the IDX files of '{name}', or leave it empty to search $GENLAB_DATA, /usr/share/datasets/{name} "
            f"and ~/.cache/genlab/{name}."
        )
    dirs = idx_search_dirs(name, data_dir)
    image_stem, label_stem = IDX_FILES[split]
    image_path, label_path = _find(dirs, image_stem), _find(dirs, label_stem)
    if image_path is None or label_path is None:
        missing = image_stem if image_path is None else label_stem
        hint = INSTALL_HINTS.get(name, "")
        raise GenlabError(
            f"dataset '{name}' not found: no {missing}[.gz] in any of: {', '.join(map(str, dirs))}. "
            f"To fix: {hint}put the four IDX files ({', '.join(IDX_FILES['train'] + IDX_FILES['test'])}, "
            f"optionally .gz) in ~/.cache/genlab/{name}/, or pass --data-dir DIR / set GENLAB_DATA."
        )
    images, labels = read_idx(image_path), read_idx(label_path)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise GenlabError(
            f"{image_path} and {label_path} do not match: images {images.shape}, labels {labels.shape}"
        )
    x = torch.from_numpy(images.astype(np.uint8)).unsqueeze(1)  # (N, 1, H, W)
    return x, torch.from_numpy(labels.astype(np.int64))


def load_digits(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 8x8 digits as uint8 (N, 1, 8, 8); a fixed seeded 80/20 train/test split."""
    from sklearn.datasets import load_digits as sk_load_digits

    d = sk_load_digits()
    x = np.rint(d.images * (255.0 / 16.0)).astype(np.uint8)  # values are 0..16
    perm = np.random.RandomState(0).permutation(len(x))
    n_train = int(round(0.8 * len(x)))
    idx = perm[:n_train] if split == "train" else perm[n_train:]
    return torch.from_numpy(x[idx]).unsqueeze(1), torch.from_numpy(d.target[idx].astype(np.int64))


IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg"}


def load_folder(path: str, size: int, grayscale: bool):
    """All PNG/JPEG files under `path`, resized (shorter side) and centre-cropped to size x size.

    When the images sit in sub-folders, the sub-folder names are the classes (sorted).
    """
    from PIL import Image, UnidentifiedImageError

    root = Path(path).expanduser()
    if not root.is_dir():
        raise GenlabError(f"image folder not found: {root} (use --data folder:PATH with an existing folder)")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not files:
        raise GenlabError(f"no PNG/JPEG images under {root}")
    subdirs = sorted({p.parent.relative_to(root).parts[0] for p in files if p.parent != root})
    labelled = bool(subdirs) and all(p.parent != root for p in files)
    images, labels = [], []
    for p in files:
        try:
            with Image.open(p) as im:
                im = im.convert("L" if grayscale else "RGB")
                w, h = im.size
                scale = size / min(w, h)
                im = im.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BICUBIC)
                w, h = im.size
                left, top = (w - size) // 2, (h - size) // 2
                im = im.crop((left, top, left + size, top + size))
                a = np.asarray(im, dtype=np.uint8)
        except (UnidentifiedImageError, OSError) as e:
            raise GenlabError(f"cannot read image {p}: {e} (corrupt or not an image; remove it)") from None
        images.append(a[None] if a.ndim == 2 else a.transpose(2, 0, 1))  # (C, H, W)
        if labelled:
            labels.append(subdirs.index(p.relative_to(root).parts[0]))
    x = torch.from_numpy(np.stack(images))
    y = torch.tensor(labels, dtype=torch.int64) if labelled else None
    return x, y, (subdirs if labelled else [])
