"""Conditional datasets derived in code from Fashion-MNIST: nothing is downloaded.

- `fmnist-color`: 32x32 RGB garments tinted with one of eight named `COLORS` (`y` class, `color` colour).
- `edges2fmnist`: pairs of a garment `x` (grey 32x32) and its edge map `x_src` (pix2pix-style).
- `edges2fmnist-color`: the grey edge map `x_src` of a garment, and the garment in 4 different colours: each
  edge map appears 4 times, a one-to-many mapping (BicycleGAN-style).
- `unpaired:A,B`: two Fashion-MNIST classes as unpaired domains (`domain` 0 / 1; CycleGAN-style);
  `unpaired:edges,garments`: edge maps <-> garments, unpaired in train, paired in test (pix2pix as upper bound).
- `scenes` (genlab/data/scenes.py): canvases of coloured garments with boxes, masks, label maps and captions.

Every builder is a deterministic function of the source IDX files, its parameters and a seed. Garments are
padded from 28x28 to 32x32 (2 black pixels each side: `x[..., 2:30, 2:30]` gives the Fashion-MNIST image back).
Built datasets are cached as safetensors under `$GENLAB_CACHE/derived/` (default `~/.cache/genlab/derived/`),
keyed by a hash of (builder version, the source files' size and mtime, the parameters); see docs/data.md.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from genlab.data import IDX_DATASETS  # genlab.data imports this module lazily (no import cycle)
from genlab.data.images import IDX_FILES, _find, idx_search_dirs, load_idx_dataset
from genlab.rng import derive_seed

# Bump when any builder's output changes: old cache entries are then never read (their key differs).
BUILDER_VERSION = 1
SOURCE = "fashion-mnist"
FMNIST_CLASSES = tuple(IDX_DATASETS[SOURCE])  # T-shirt/top, Trouser, ..., Ankle boot

# The eight colours of fmnist-color, edges2fmnist-color and scenes (index = the `color` label). Each has one
# channel at 255, so tinting keeps the grey garment exactly in that channel: grey = x.max(channel).
COLORS = ("red", "orange", "yellow", "green", "cyan", "blue", "purple", "pink")
COLOR_RGB = (
    (255, 40, 40), (255, 140, 0), (255, 230, 0), (40, 255, 40),
    (0, 230, 255), (40, 100, 255), (170, 60, 255), (255, 100, 200),
)
PAD = 2  # 28x28 garments are padded to 32x32
EDGE_THRESHOLD = 0.2  # an edge pixel's gradient magnitude is at least this fraction of the image's maximum
PAIR_COLORS = 4  # edges2fmnist-color: colours per edge map
PAIR_SOURCES = {"train": 15000, "test": 2500}  # edges2fmnist-color: source garments per split (x 4 colours)
DEFAULT_UNPAIRED = ("sneaker", "ankle-boot")


# --- cache -----------------------------------------------------------------------------------------------


def cache_dir() -> Path:
    """Where derived datasets are cached: $GENLAB_CACHE/derived (default ~/.cache/genlab/derived)."""
    return Path(os.environ.get("GENLAB_CACHE", Path.home() / ".cache" / "genlab")) / "derived"


def source_fingerprint(split: str, data_dir: str = "") -> list:
    """(file name, size, mtime) of the split's Fashion-MNIST IDX files: a changed source rebuilds the cache
    without reading it on every hit. Missing files give [] (loading them then raises the install hint)."""
    dirs = idx_search_dirs(SOURCE, data_dir)
    out = []
    for stem in IDX_FILES[split]:
        path = _find(dirs, stem)
        if path is None:
            return []
        st = path.stat()
        out.append([str(path.resolve()), st.st_size, st.st_mtime_ns])
    return out


def cache_key(name: str, split: str, params: dict, data_dir: str = "") -> str:
    """SHA-256 of (builder version, dataset, split, parameters, source fingerprint)."""
    record = {"version": BUILDER_VERSION, "name": name, "split": split, "params": params,
              "source": source_fingerprint(split, data_dir)}
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()


Built = tuple[dict[str, torch.Tensor], dict]  # (tensors, JSON-able metadata such as captions)


def cached(name: str, split: str, params: dict, build: Callable[[], Built], *, data_dir: str = "",
           cache: bool = True) -> Built:
    """`build()`'s tensors and metadata, from the cache when present, else built and written atomically.

    A damaged cache file is rebuilt, never trusted; an unwritable cache folder only costs a rebuild next time.
    """
    if not cache:
        return build()
    from safetensors import safe_open
    from safetensors.torch import save_file

    key = cache_key(name, split, params, data_dir)
    path = cache_dir() / f"{name}-{split}-{key[:16]}.safetensors"
    if path.is_file():
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = json.loads((f.metadata() or {})["genlab"])
                # clone: get_tensor maps the file, and a file changed in place would crash the process (SIGBUS)
                return {k: f.get_tensor(k).clone() for k in f.keys()}, meta
        except Exception:  # truncated, corrupt or foreign: rebuild (and replace it below when writable)
            pass
    t0 = time.perf_counter()
    print(f"genlab: building {name}/{split} (once, then cached in {path.parent})", file=sys.stderr, flush=True)
    tensors, meta = build()
    print(f"genlab: built {name}/{split} in {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata={"genlab": json.dumps(meta)})
        os.replace(tmp, path)
    except OSError as e:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:  # e.g. the cache path runs through a file: nothing was written
            pass
        warnings.warn(f"could not cache {name}/{split} in {path.parent}: {e} (it is rebuilt next time)",
                      stacklevel=2)
    return tensors, meta


# --- image operations ------------------------------------------------------------------------------------


def pad32(grey: np.ndarray) -> np.ndarray:
    """uint8 (N, 28, 28) -> (N, 32, 32), black borders."""
    return np.pad(grey, ((0, 0), (PAD, PAD), (PAD, PAD)))


CHUNK = 512  # images per chunk of array work: temporaries stay in cache (4-15x faster than whole arrays)


def tint(grey: np.ndarray, colors: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W) grey garments x colour indices (N,) -> uint8 (N, 3, H, W): each pixel's grey level
    scales the colour's RGB (black stays black; the colour's 255-channel keeps the grey level exactly)."""
    rgb = np.asarray(COLOR_RGB, np.uint16)[colors]  # (N, 3)
    out = np.empty((len(grey), 3, *grey.shape[1:]), np.uint8)
    for i in range(0, len(grey), CHUNK):
        g = grey[i : i + CHUNK, None].astype(np.uint16)  # (n, 1, H, W); g * 255 + 127 fits in uint16
        out[i : i + CHUNK] = (g * rgb[i : i + CHUNK, :, None, None] + 127) // 255  # (n, 3, H, W)
    return out


def untint(x: np.ndarray) -> np.ndarray:
    """The grey garment back from a tinted uint8 (N, 3, H, W) image: its per-pixel maximum channel."""
    return x.max(axis=1)


def _blur(a: np.ndarray) -> np.ndarray:
    """Separable [1, 2, 1] / 4 blur of float (N, H, W), edges replicated."""
    p = np.pad(a, ((0, 0), (1, 1), (0, 0)), mode="edge")
    a = 0.25 * p[:, :-2] + 0.5 * p[:, 1:-1] + 0.25 * p[:, 2:]
    p = np.pad(a, ((0, 0), (0, 0), (1, 1)), mode="edge")
    return 0.25 * p[:, :, :-2] + 0.5 * p[:, :, 1:-1] + 0.25 * p[:, :, 2:]


def edge_map(grey: np.ndarray, threshold: float = EDGE_THRESHOLD) -> np.ndarray:
    """Canny-like edges of uint8 (N, H, W) images -> uint8 (N, H, W) in {0, 255} (see `_edges`), in chunks."""
    if len(grey) <= CHUNK:
        return _edges(grey, threshold)
    return np.concatenate([_edges(grey[i : i + CHUNK], threshold) for i in range(0, len(grey), CHUNK)])


def _edges(grey: np.ndarray, threshold: float) -> np.ndarray:
    """Canny-like edges of uint8 (N, H, W) images -> uint8 (N, H, W) in {0, 255}; numpy only.

    Blur, Sobel gradients, non-maximum suppression along the gradient direction (quantised to 4 directions
    by exact ratio tests, so results are bit-identical across platforms), then a threshold at `threshold` x
    the image's largest gradient (so faint and bright garments both get closed outlines). No hysteresis.
    """
    a = _blur(grey.astype(np.float32))
    p = np.pad(a, ((0, 0), (1, 1), (1, 1)), mode="edge")
    gx = (p[:, :-2, 2:] + 2 * p[:, 1:-1, 2:] + p[:, 2:, 2:]) - (p[:, :-2, :-2] + 2 * p[:, 1:-1, :-2] + p[:, 2:, :-2])
    gy = (p[:, 2:, :-2] + 2 * p[:, 2:, 1:-1] + p[:, 2:, 2:]) - (p[:, :-2, :-2] + 2 * p[:, :-2, 1:-1] + p[:, :-2, 2:])
    mag = np.sqrt(gx * gx + gy * gy)  # (N, H, W)
    m = np.pad(mag, ((0, 0), (1, 1), (1, 1)))
    c = m[:, 1:-1, 1:-1]
    ax, ay = np.abs(gx), np.abs(gy)
    tan = np.float32(0.41421356)  # tan(22.5 deg)
    horizontal = ay <= tan * ax  # gradient along x: compare left/right neighbours
    vertical = ax <= tan * ay
    same_sign = (gx * gy) > 0  # gradient along the main diagonal (down-right in image coordinates)
    keep = np.where(
        horizontal, (c >= m[:, 1:-1, :-2]) & (c >= m[:, 1:-1, 2:]),
        np.where(vertical, (c >= m[:, :-2, 1:-1]) & (c >= m[:, 2:, 1:-1]),
                 np.where(same_sign, (c >= m[:, :-2, :-2]) & (c >= m[:, 2:, 2:]),
                          (c >= m[:, :-2, 2:]) & (c >= m[:, 2:, :-2]))))
    peak = mag.reshape(len(mag), -1).max(axis=1)[:, None, None]
    edges = keep & (mag > threshold * peak) & (peak > 0)
    return (edges * 255).astype(np.uint8)


def _source(split: str, data_dir: str, limit: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST grey uint8 (N, 28, 28) and labels int64 (N,), the first `limit` when given."""
    x, y = load_idx_dataset(SOURCE, split, data_dir)
    x, y = x[:, 0].numpy(), y.numpy()
    return (x[:limit], y[:limit]) if limit else (x, y)


def _rng(name: str, split: str, seed: int) -> np.random.Generator:
    return np.random.default_rng(derive_seed("derived", name, split, seed))


# --- datasets ---------------------------------------------------------------------------------------------


def fmnist_color(split: str = "train", *, data_dir: str = "", seed: int = 0, limit: int | None = None,
                 cache: bool = True):
    """`fmnist-color`: uint8 (N, 3, 32, 32) garments, each tinted with a seeded random colour of `COLORS`.

    Extra `color` int64 (N,): the colour index; `y` the class. N = 60,000 / 10,000 (`limit`: the first N).
    """
    from genlab.data import Dataset

    def build() -> Built:
        grey, y = _source(split, data_dir, limit)
        colors = _rng("fmnist-color", split, seed).integers(0, len(COLORS), len(grey))
        x = tint(pad32(grey), colors)
        return {"x": torch.from_numpy(x), "y": torch.from_numpy(y), "color": torch.from_numpy(colors)}, {}

    t, _ = cached("fmnist-color", split, {"seed": seed, "limit": limit}, build, data_dir=data_dir, cache=cache)
    return Dataset("fmnist-color", t["x"], t["y"], list(FMNIST_CLASSES), {"color": t["color"]})


def edges2fmnist(split: str = "train", *, data_dir: str = "", limit: int | None = None, cache: bool = True):
    """`edges2fmnist`: grey garments `x` uint8 (N, 1, 32, 32) and their edge maps `x_src` (same shape, {0, 255}).

    `y` the class; N = 60,000 / 10,000. No randomness: `x_src == edge_map(x)` sample by sample.
    """
    from genlab.data import Dataset

    def build() -> Built:
        grey, y = _source(split, data_dir, limit)
        x = pad32(grey)
        return {"x": torch.from_numpy(x[:, None]), "y": torch.from_numpy(y),
                "x_src": torch.from_numpy(edge_map(x)[:, None])}, {}

    t, _ = cached("edges2fmnist", split, {"limit": limit}, build, data_dir=data_dir, cache=cache)
    return Dataset("edges2fmnist", t["x"], t["y"], list(FMNIST_CLASSES), {"x_src": t["x_src"]})


def edges2fmnist_color(split: str = "train", *, data_dir: str = "", seed: int = 0, sources: int | None = None,
                       cache: bool = True):
    """`edges2fmnist-color`: one grey edge map `x_src` uint8 (N, 1, 32, 32) -> RGB garments `x` (N, 3, 32, 32).

    `sources` garments (default 15,000 train / 2,500 test, a seeded choice) each appear `PAIR_COLORS` = 4 times
    in a row, in 4 different colours drawn from the 8: rows 4i..4i+3 share one edge map. Extra `color` int64
    (N,) the colour of x; `y` the class. N = 60,000 / 10,000.
    """
    from genlab.data import Dataset

    n_src = sources or PAIR_SOURCES[split]

    def build() -> Built:
        grey, y = _source(split, data_dir, None)
        if n_src > len(grey):
            raise ValueError(f"edges2fmnist-color: {n_src} sources asked, the {split} split has {len(grey)}")
        rng = _rng("edges2fmnist-color", split, seed)
        idx = np.sort(rng.choice(len(grey), n_src, replace=False))
        colors = np.argsort(rng.random((n_src, len(COLORS))), axis=1)[:, :PAIR_COLORS].reshape(-1)  # distinct
        g = pad32(grey[idx])
        edges = np.repeat(edge_map(g), PAIR_COLORS, axis=0)
        x = tint(np.repeat(g, PAIR_COLORS, axis=0), colors)
        return {"x": torch.from_numpy(x), "y": torch.from_numpy(np.repeat(y[idx], PAIR_COLORS)),
                "x_src": torch.from_numpy(edges[:, None]), "color": torch.from_numpy(colors)}, {}

    t, _ = cached("edges2fmnist-color", split, {"seed": seed, "sources": n_src}, build, data_dir=data_dir,
                  cache=cache)
    return Dataset("edges2fmnist-color", t["x"], t["y"], list(FMNIST_CLASSES),
                   {"x_src": t["x_src"], "color": t["color"]})


def class_key(name: str) -> str:
    """'Ankle boot' -> 'ankle-boot', 'T-shirt/top' -> 't-shirt/top': how classes are named on the command line."""
    return name.strip().lower().replace(" ", "-").replace("_", "-")


CLASS_ALIASES = {"t-shirt": 0, "tshirt": 0, "top": 0, "trousers": 1, "sneakers": 7, "ankle-boots": 9, "boot": 9}


def parse_class(text: str) -> int:
    """A Fashion-MNIST class from its name (case-insensitive, '-' for spaces) or id 0-9; ValueError otherwise."""
    key = class_key(text)
    if key.isdigit() and int(key) < len(FMNIST_CLASSES):
        return int(key)
    names = [class_key(c) for c in FMNIST_CLASSES]
    if key in names:
        return names.index(key)
    if key in CLASS_ALIASES:
        return CLASS_ALIASES[key]
    raise ValueError(f"unpaired: unknown class '{text}'; expected one of: {', '.join(names)} (or an id 0-9)")


def parse_unpaired(arg: str) -> tuple[int, int]:
    """'sneaker,ankle-boot' (or '7,9'; '' the default pair) -> the two class ids; ValueError when malformed."""
    parts = arg.split(",") if arg.strip() else list(DEFAULT_UNPAIRED)
    if len(parts) != 2 or not all(p.strip() for p in parts):
        raise ValueError(f"unpaired:A,B takes two classes, e.g. unpaired:sneaker,ankle-boot; got '{arg}'")
    a, b = (parse_class(p) for p in parts)
    if a == b:
        raise ValueError(f"unpaired: the two domains must be different classes; got '{FMNIST_CLASSES[a]}' twice")
    return a, b


EDGES_GARMENTS = "edges,garments"  # unpaired:edges,garments: edge maps (A) <-> garments (B), a pairable pair


def unpaired(arg: str = "", split: str = "train", *, data_dir: str = "", name: str = ""):
    """`unpaired:A,B`: grey garments uint8 (N, 1, 32, 32) of classes A (domain 0) then B (domain 1), no pairing.

    The larger class is truncated so both domains have the same size (6,000 each in train, 1,000 in test for
    Fashion-MNIST's balanced classes); `y` keeps the original class. A selection, not a build: not cached.
    `unpaired:edges,garments` is `unpaired_edges` (edge maps <-> garments).
    """
    from genlab.data import Dataset

    if class_key(arg) == EDGES_GARMENTS:
        return unpaired_edges(split, data_dir=data_dir)
    a, b = parse_unpaired(arg)
    grey, y = _source(split, data_dir, None)
    ia, ib = np.flatnonzero(y == a), np.flatnonzero(y == b)
    n = min(len(ia), len(ib))
    idx = np.concatenate([ia[:n], ib[:n]])
    domain = np.repeat(np.arange(2, dtype=np.int64), n)
    name = name or f"unpaired:{class_key(FMNIST_CLASSES[a])},{class_key(FMNIST_CLASSES[b])}"
    return Dataset(name, torch.from_numpy(pad32(grey[idx])[:, None]), torch.from_numpy(y[idx]),
                   list(FMNIST_CLASSES), {"domain": torch.from_numpy(domain)})


def unpaired_edges(split: str = "train", *, data_dir: str = ""):
    """`unpaired:edges,garments`: edge maps (domain 0) and garments (domain 1) of `edges2fmnist`, unpaired for
    training, paired for scoring: the CycleGAN setting of Zhu et al. 2017, Sec. 5.1.1 (labels <-> photos with
    the pairs hidden, so that pix2pix on the paired data is an upper bound).

    train: a fixed half of the training garments gives its edge maps, the other half its garments (30,000
    each), so no garment appears in both domains and no pair can be found. test: every test garment's edge
    map (rows 0..N-1), then the garments themselves (rows N..2N-1): row i and row N + i are a pair. `y` is the
    garment's class in both domains.
    """
    from genlab.data import Dataset

    d = edges2fmnist(split, data_dir=data_dir)
    n = len(d)
    if split == "train":
        perm = torch.from_numpy(_rng("unpaired:edges,garments", split, 0).permutation(n))
        ia, ib = perm[: n // 2].sort().values, perm[n // 2 : 2 * (n // 2)].sort().values
    else:
        ia = ib = torch.arange(n)
    x = torch.cat([d.extra["x_src"][ia], d.x[ib]])
    domain = torch.cat([torch.zeros(len(ia), dtype=torch.int64), torch.ones(len(ib), dtype=torch.int64)])
    return Dataset(f"unpaired:{EDGES_GARMENTS}", x, torch.cat([d.y[ia], d.y[ib]]), list(FMNIST_CLASSES),
                   {"domain": domain})
