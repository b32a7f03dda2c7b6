"""Model families: one file each, listed explicitly (no registration decorators).

Each family module provides `Config`, `build(cfg)`, `make_optimizers(model, cfg)`,
`train_step(model, batch, opts, ctx)`, `sample(model, n, *, cond=None, generator=None, **opts)` and `SAMPLERS`;
optionally `encode`/`decode`, `log_likelihood`, and `report_images` (extra pictures for the run report).
"""

from genlab.errors import unknown
from genlab.models import ae, ddpm, gan, gmm, vae, vqvae

FAMILIES = {"ddpm": ddpm, "vae": vae, "ae": ae, "gan": gan, "vqvae": vqvae, "gmm": gmm}


def get_family(name: str):
    if name not in FAMILIES:
        raise unknown("family", name, FAMILIES)
    return FAMILIES[name]
