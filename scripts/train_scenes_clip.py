"""Train `scenes-clip`, a domain CLIP for `scenes`: write genlab/metrics/weights/scenes-clip.safetensors + .json.

    nice -n 10 env OMP_NUM_THREADS=1 python scripts/train_scenes_clip.py --train-scenes 8000 --epochs 15

The image tower (the bundled `Evaluator` CNN reading a 64x64 scene average-pooled to 32x32, its last layer a
projection to 384-d, unit norm) is trained contrastively against the *frozen* pooled caption embeddings of
all-MiniLM-L6-v2 (genlab.text): the symmetric InfoNCE loss of CLIP (Radford et al. 2021, Fig. 3) with a learned
temperature (log 1/0.07 at the start, the scale clamped at 100). Only the image side learns, so the text tower
is the sentence encoder itself (locked-text tuning, Zhai et al. 2022). This is NOT OpenAI's CLIP: its scores
compare only with scores from the same weights (their SHA-256 is in every result).

Recorded: retrieval recall R@1 / R@5, image->text and text->image, on the test split (2,000 scenes, the
gallery is all 2,000), over all test scenes and separately over those with seen and with held-out colour-class
pairs (queries restricted, gallery unchanged); R@k within the first 200 test scenes (a gallery of 200, which the
tests recompute); the mean CLIP score (w = 2.5) of test images with their own captions.
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from genlab.data import load_dataset, to_float
from genlab.metrics.evaluators import EVALUATORS, Evaluator, save_evaluator

NAME = "scenes-clip"


@torch.no_grad()
def text_embeddings(captions: list[str], encoder, batch_size: int = 256, log=print) -> torch.Tensor:
    """Pooled unit-norm caption embeddings (N, 384) (tokens are dropped: 20k x L x 384 would not fit)."""
    out = []
    t0 = time.time()
    for i in range(0, len(captions), batch_size):
        out.append(encoder.encode(captions[i : i + batch_size])[2])
        if i // batch_size % 10 == 0:
            log(f"  text embeddings {i + batch_size}/{len(captions)}  {time.time() - t0:.0f}s")
    return torch.cat(out)


@torch.no_grad()
def image_embeddings(model: Evaluator, x: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    model.eval()
    return torch.cat([model.encode_image(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])


def retrieval(img: torch.Tensor, txt: torch.Tensor, queries: torch.Tensor, ks=(1, 5)) -> dict[str, float]:
    """Recall@k for the query rows `queries` (bool (N,)): image->text (does the image's own caption rank in the
    top k of all N captions?) and text->image. Ties count against the query (rank = number scoring >= own)."""
    sim = img.double() @ txt.double().T  # (N, N): image i vs caption j
    own = sim.diagonal()
    rank_i2t = (sim >= own[:, None]).sum(1)  # own caption's rank among captions, 1 = best
    rank_t2i = (sim >= own[None, :]).sum(0)  # own image's rank among images
    out = {}
    for k in ks:
        out[f"i2t_R@{k}"] = round((rank_i2t[queries] <= k).double().mean().item(), 4)
        out[f"t2i_R@{k}"] = round((rank_t2i[queries] <= k).double().mean().item(), 4)
    return out


def shift(x: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    """Random shift by up to `pad` px (zero pad + crop), uint8 (B, C, H, W); no flips (they swap left and right)."""
    b, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    dy, dx = torch.randint(0, 2 * pad + 1, (2,), generator=generator).tolist()  # one shift per batch: cheap
    return padded[:, :, dy : dy + h, dx : dx + w].contiguous()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--train-scenes", type=int, default=8000, help="first N training scenes (captions cost ~30 ms each)"
    )
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out-dir", default=None)
    args = p.parse_args(argv)

    from genlab.data.scenes import check_size
    from genlab.text import load_text_encoder

    spec = EVALUATORS[NAME]
    size = check_size(spec.image_size)
    train_set = load_dataset("scenes", "train", image_size=size)
    test_set = load_dataset("scenes", "test", image_size=size)
    n = min(args.train_scenes, len(train_set))
    x_train, captions = train_set.x[:n], train_set.extra_text["text"][:n]
    enc = load_text_encoder("all-minilm-l6-v2")
    t0 = time.time()
    txt_train = text_embeddings(captions, enc)
    txt_test = text_embeddings(test_set.extra_text["text"], enc)
    text_seconds = time.time() - t0
    print(f"text embeddings: {text_seconds:.0f}s", flush=True)

    torch.manual_seed(args.seed)
    model = Evaluator(spec.in_channels, spec.image_size, spec.num_classes, spec.widths, spec.convs, spec.feature_dim,
                      downsample=spec.downsample, embedding=True)  # fmt: skip
    logit_scale = torch.nn.Parameter(
        torch.tensor(math.log(1 / 0.07))
    )  # Radford et al. 2021: learned temperature
    decay = [q for q in model.parameters() if q.dim() > 1]
    no_decay = [q for q in model.parameters() if q.dim() <= 1] + [logit_scale]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=args.lr)  # fmt: skip
    steps_per_epoch = n // args.batch_size
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.epochs * steps_per_epoch,
                                                pct_start=0.15)  # fmt: skip
    g = torch.Generator().manual_seed(args.seed)
    t0 = time.time()
    for epoch in range(args.epochs):
        model.train()
        perm = torch.randperm(n, generator=g)
        total = 0.0
        for i in range(steps_per_epoch):
            idx = perm[i * args.batch_size : (i + 1) * args.batch_size]
            img = F.normalize(
                model.forward_heads(to_float(shift(x_train[idx], spec.shift, g)))["logits"], dim=1
            )
            logits = logit_scale.exp().clamp(max=100) * img @ txt_train[idx].T  # (B, B): image i vs caption j
            target = torch.arange(len(idx))
            loss = (
                F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)
            ) / 2  # symmetric InfoNCE
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item()
        print(f"epoch {epoch + 1}/{args.epochs}  loss {total / steps_per_epoch:.4f}  "
              f"scale {logit_scale.exp().item():.1f}  {time.time() - t0:.0f}s", flush=True)  # fmt: skip
    model.eval()
    img_test = image_embeddings(model, test_set.x)
    heldout = test_set.extra["heldout"].bool()
    all_ = torch.ones_like(heldout)
    rec = {
        key: retrieval(img_test, txt_test, q)
        for key, q in (("all", all_), ("seen", ~heldout), ("heldout", heldout))
    }
    first = slice(0, 200)  # a small gallery the tests re-check in seconds
    rec["first200"] = retrieval(img_test[first], txt_test[first], torch.ones(200, dtype=torch.bool))
    clip_s = (2.5 * (img_test * txt_test).sum(1).clamp(min=0)).double()
    print(f"{NAME}: test retrieval {rec}", flush=True)
    command = ["python", "scripts/train_scenes_clip.py", "--train-scenes", str(n), "--epochs", str(args.epochs),
               "--seed", str(args.seed)]  # fmt: skip
    info = {
        "retrieval_test": rec,
        "n_test_seen": int((~heldout).sum()), "n_test_heldout": int(heldout.sum()),
        "logit_scale": round(logit_scale.exp().item(), 4),
        "clip_score_test": {"all": round(clip_s.mean().item(), 4), "seen": round(clip_s[~heldout].mean().item(), 4),
                            "heldout": round(clip_s[heldout].mean().item(), 4)},
        "text_encoder": "all-minilm-l6-v2", "text_encoder_weights_sha256": enc.weights_sha256,
        "n_train": n, "n_test": len(test_set),
        "training": {"epochs": args.epochs, "seed": args.seed, "batch_size": args.batch_size, "lr": args.lr,
                     "weight_decay": args.weight_decay, "optimizer": "AdamW + OneCycleLR",
                     "loss": "symmetric InfoNCE, learned temperature", "augment": f"shift<={spec.shift}px",
                     "seconds": round(time.time() - t0, 1), "text_seconds": round(text_seconds, 1),
                     "torch": torch.__version__},
        "command": shlex.join(command),
    }  # fmt: skip
    path = save_evaluator(model, NAME, info, args.out_dir)
    print(f"wrote {path.with_suffix('.safetensors')} and {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
