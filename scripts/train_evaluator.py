"""Train a bundled domain evaluator and write genlab/metrics/weights/<NAME>.safetensors + <NAME>.json.

    nice -n 19 env OMP_NUM_THREADS=1 python scripts/train_evaluator.py fmnist-net
    python scripts/train_evaluator.py digits-net --epochs 40

Recipe: AdamW with a one-cycle learning rate (Smith & Topin 2019), label smoothing 0.1, and light augmentation —
random shifts of up to 2 px (1 px for the 8x8 digits; zero padding + random crop) and, for Fashion-MNIST only, horizontal flips.
Trained on the dataset's train split; the test split is used once, at the end, for the recorded accuracy.
Deterministic for a given --seed and thread count.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from genlab.data import load_dataset, to_float
from genlab.metrics.evaluators import EVALUATORS, Evaluator, save_evaluator

DEFAULT_EPOCHS = {"fmnist-net": 14, "mnist-net": 6, "digits-net": 60}


def augment(x: torch.Tensor, *, pad: int, hflip: bool, generator: torch.Generator) -> torch.Tensor:
    """Random shift by up to `pad` px (zero-pad, random crop) and optional horizontal flip; uint8 (B, C, H, W)."""
    b, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))  # (B, C, H+2p, W+2p); 0 is the background of these datasets
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    rows = (dy[:, None] + torch.arange(h))[:, :, None]  # (B, H, 1)
    cols = (dx[:, None] + torch.arange(w))[:, None, :]  # (B, 1, W)
    out = padded.permute(0, 2, 3, 1)[torch.arange(b)[:, None, None], rows, cols]  # (B, H, W, C)
    out = out.permute(0, 3, 1, 2)  # (B, C, H, W)
    if hflip:
        flip = torch.rand(b, generator=generator) < 0.5
        out = torch.where(flip[:, None, None, None], out.flip(3), out)
    return out.contiguous()


@torch.no_grad()
def accuracy(model: Evaluator, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> float:
    model.eval()
    correct = sum((model.logits(x[i : i + batch_size]).argmax(1) == y[i : i + batch_size]).sum().item()
                  for i in range(0, len(x), batch_size))  # fmt: skip
    return correct / len(x)


def train(name: str, *, epochs: int, seed: int, batch_size: int, lr: float, weight_decay: float, data_dir: str = "",
          log=lambda msg: print(msg, flush=True)) -> tuple[Evaluator, dict]:  # fmt: skip
    """Train evaluator `name`; returns the model (eval mode) and the record fields for `save_evaluator`."""
    spec = EVALUATORS[name]
    train_set = load_dataset(spec.dataset, "train", data_dir=data_dir)
    test_set = load_dataset(spec.dataset, "test", data_dir=data_dir)
    assert train_set.shape == [spec.in_channels, spec.image_size, spec.image_size], train_set.shape

    torch.manual_seed(seed)
    model = Evaluator(spec.in_channels, spec.image_size, spec.num_classes, spec.widths, spec.convs, spec.feature_dim)
    # No weight decay on BatchNorm parameters and biases (they are scales and offsets, not weights).
    decay = [p for p in model.parameters() if p.dim() > 1]
    no_decay = [p for p in model.parameters() if p.dim() <= 1]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=lr)  # fmt: skip
    steps_per_epoch = len(train_set) // batch_size  # drop the last partial batch: BatchNorm dislikes tiny batches
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch, pct_start=0.2)
    g = torch.Generator().manual_seed(seed)
    t0 = time.time()
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(train_set), generator=g)
        total, n = 0.0, 0
        for i in range(steps_per_epoch):
            idx = perm[i * batch_size : (i + 1) * batch_size]
            x = augment(train_set.x[idx], pad=spec.shift, hflip=spec.hflip, generator=g)
            _, logits = model.forward_float(to_float(x))
            loss = F.cross_entropy(logits, train_set.y[idx], label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total, n = total + loss.item() * len(idx), n + len(idx)
        log(f"epoch {epoch + 1}/{epochs}  loss {total / n:.4f}  {time.time() - t0:.0f}s")
    test_acc = accuracy(model, test_set.x, test_set.y)
    train_acc = accuracy(model, train_set.x[:10000], train_set.y[:10000])
    log(f"{name}: test accuracy {test_acc:.4f} (train, first 10k: {train_acc:.4f})")
    training = {
        "epochs": epochs, "seed": seed, "batch_size": batch_size, "lr": lr, "weight_decay": weight_decay,
        "optimizer": "AdamW + OneCycleLR", "label_smoothing": 0.1,
        "augment": f"shift<={spec.shift}px" + (", hflip" if spec.hflip else ""),
        "seconds": round(time.time() - t0, 1), "torch": torch.__version__,
    }  # fmt: skip
    info = {
        "test_accuracy": round(test_acc, 5),
        "train_accuracy_first10k": round(train_acc, 5),
        "n_train": len(train_set),
        "n_test": len(test_set),
        "classes": train_set.classes,
        "training": training,
    }
    return model.eval(), info


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("name", help=f"one of: {', '.join(EVALUATORS)}")
    p.add_argument("--epochs", type=int, default=0, help="default: " + ", ".join(f"{k} {v}" for k, v in DEFAULT_EPOCHS.items()))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=3e-3, help="peak learning rate of the one-cycle schedule")
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--data-dir", default="", help="where the dataset's files are (default: the usual search path)")
    p.add_argument("--out-dir", default=None, help="default: genlab/metrics/weights (the bundled weights)")
    args = p.parse_args(argv)
    if args.name not in EVALUATORS:
        p.error(f"unknown evaluator '{args.name}'; expected one of: {', '.join(sorted(EVALUATORS))}")
    epochs = args.epochs or DEFAULT_EPOCHS[args.name]
    model, info = train(args.name, epochs=epochs, seed=args.seed, batch_size=args.batch_size, lr=args.lr,
                        weight_decay=args.weight_decay, data_dir=args.data_dir)  # fmt: skip
    command = ["python", "scripts/train_evaluator.py", args.name, "--epochs", str(epochs), "--seed", str(args.seed)]
    for flag, value, default in (("--batch-size", args.batch_size, 128), ("--lr", args.lr, 3e-3),
                                 ("--weight-decay", args.weight_decay, 5e-4)):  # fmt: skip
        if value != default:
            command += [flag, str(value)]
    info["command"] = shlex.join(command)
    path = save_evaluator(model, args.name, info, args.out_dir)
    print(f"wrote {path.with_suffix('.safetensors')} and {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
