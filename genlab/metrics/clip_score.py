"""CLIP score (Hessel et al. 2021, "CLIPScore: A Reference-free Evaluation Metric for Image Captioning", Eq. 1):

    CLIP-S(image, caption) = w * max(cos(E_image(image), E_text(caption)), 0),   w = 2.5

averaged over image-caption pairs. Text-to-image papers often report the same quantity with w = 100.

The encoder is pluggable: any object with `encode_image(uint8 (B, C, H, W)) -> (B, D)` and
`encode_text(list[str]) -> (B, D)`. `load_hf_clip(path)` wraps a Hugging Face CLIP checkpoint directory that is
already on disk (through the optional `transformers` package; nothing is downloaded).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F

from genlab.errors import GenlabError

CLIP_WEIGHT = 2.5  # w in Hessel et al. 2021, Eq. 1: stretches the usual range of cosines to about [0, 1]


class ImageTextEncoder(Protocol):
    def encode_image(self, images: torch.Tensor) -> torch.Tensor: ...  # uint8 (B, C, H, W) -> (B, D)

    def encode_text(self, texts: list[str]) -> torch.Tensor: ...  # B strings -> (B, D)


def clip_score_from_embeddings(image_emb: torch.Tensor, text_emb: torch.Tensor, w: float = CLIP_WEIGHT) -> torch.Tensor:
    """Per-pair CLIP-S (N,) float64 from paired embeddings (N, D) and (N, D); Hessel et al. 2021, Eq. 1."""
    if image_emb.dim() != 2 or text_emb.dim() != 2:
        raise ValueError(f"embeddings must be (N, D); got image {tuple(image_emb.shape)}, text {tuple(text_emb.shape)}")
    if image_emb.shape != text_emb.shape:
        raise ValueError(
            f"image embeddings {tuple(image_emb.shape)} and text embeddings {tuple(text_emb.shape)} must pair up "
            "(same N, same D: one caption per image, from one CLIP model)"
        )
    cos = F.cosine_similarity(image_emb.double(), text_emb.double(), dim=1, eps=1e-12)  # (N,)
    return w * cos.clamp(min=0.0)


@torch.no_grad()
def clip_score(
    encoder: ImageTextEncoder, images: torch.Tensor, captions: Sequence[str], *, batch_size: int = 64,
    w: float = CLIP_WEIGHT,
) -> dict:  # fmt: skip
    """Mean CLIP-S of uint8 images (N, C, H, W) against their captions (N strings).

    Returns {"clip_score": float, "per_image": float64 numpy (N,)}.
    """
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.dtype != torch.uint8:
        desc = f"{images.dtype} {tuple(images.shape)}" if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"clip_score expects uint8 images (N, C, H, W); got {desc}. Quantize with genlab.data.to_uint8")
    if isinstance(captions, str) or not all(isinstance(c, str) for c in captions):
        raise ValueError("captions must be a list of strings, one per image")
    if len(captions) != images.shape[0]:
        raise ValueError(f"got {images.shape[0]} images but {len(captions)} captions; give one caption per image")
    if images.shape[0] == 0:
        raise ValueError("clip_score got 0 images")
    scores = []
    for start in range(0, images.shape[0], batch_size):
        batch, texts = images[start : start + batch_size], list(captions[start : start + batch_size])
        img, txt = encoder.encode_image(batch), encoder.encode_text(texts)
        if img.shape[0] != batch.shape[0] or txt.shape[0] != len(texts):
            raise ValueError(
                f"encoder returned {img.shape[0]} image and {txt.shape[0]} text embeddings for a batch of "
                f"{batch.shape[0]}; encode_image / encode_text must return one row per input"
            )
        scores.append(clip_score_from_embeddings(img.float().cpu(), txt.float().cpu(), w))
    per_image = torch.cat(scores).numpy()
    return {"clip_score": float(per_image.mean()), "per_image": per_image}


def _embedding(out) -> torch.Tensor:
    """transformers 4.x returns the projected embeddings; 5.x wraps them as `pooler_output`."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


class HFCLIPEncoder:
    """A local Hugging Face CLIP checkpoint as an `ImageTextEncoder` (projected image / text embeddings)."""

    def __init__(self, model, processor, device: torch.device):
        self.model, self.processor, self.device = model, processor, device

    @torch.no_grad()
    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"encode_image expects uint8 (B, 1 or 3, H, W); got {images.dtype} {tuple(images.shape)}")
        rgb = images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images  # grayscale -> RGB
        arrays = [np.ascontiguousarray(im.permute(1, 2, 0).cpu().numpy()) for im in rgb]  # (H, W, 3) each
        inputs = self.processor(images=arrays, return_tensors="pt")  # CLIP's resize, centre crop, normalisation
        return _embedding(self.model.get_image_features(pixel_values=inputs["pixel_values"].to(self.device)))

    @torch.no_grad()
    def encode_text(self, texts: list[str]) -> torch.Tensor:
        inputs = self.processor(text=list(texts), return_tensors="pt", padding=True, truncation=True)
        inputs = {k: v.to(self.device) for k, v in inputs.items() if k in ("input_ids", "attention_mask")}
        return _embedding(self.model.get_text_features(**inputs))


def load_hf_clip(path: str | Path, *, device: str | torch.device = "cpu") -> HFCLIPEncoder:
    """A Hugging Face CLIP checkpoint directory on disk (e.g. a saved `openai/clip-vit-base-patch32`), offline."""
    path = Path(path).expanduser()
    if not path.is_dir():
        raise GenlabError(
            f"CLIP checkpoint directory not found: {path}. To fix: on a machine with internet access, save one with "
            "`CLIPModel.from_pretrained(NAME).save_pretrained(DIR)` and `CLIPProcessor.from_pretrained(NAME)"
            ".save_pretrained(DIR)`, copy DIR here and pass its path (genlab never downloads)"
        )
    try:
        from transformers import CLIPModel, CLIPProcessor
    except ImportError:
        raise GenlabError(
            "CLIP score with a Hugging Face checkpoint needs the optional `transformers` package: "
            "`pip install -c scripts/constraints.txt transformers`; or pass your own encoder object with "
            "encode_image / encode_text"
        ) from None
    try:
        model = CLIPModel.from_pretrained(str(path), local_files_only=True)
        processor = CLIPProcessor.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as e:
        raise GenlabError(f"{path} is not a complete Hugging Face CLIP checkpoint (model + processor files): {e}") from None
    device = torch.device(device)
    return HFCLIPEncoder(model.to(device).eval(), processor, device)
