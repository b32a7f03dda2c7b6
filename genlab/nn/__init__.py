"""Layers used identically by two or more families: time embeddings, residual blocks, attention, the U-Net."""

from genlab.nn.embeddings import timestep_embedding
from genlab.nn.unet import MLPDenoiser, UNet

__all__ = ["timestep_embedding", "UNet", "MLPDenoiser"]
