"""Train a bundled domain evaluator and write genlab/metrics/weights/<NAME>.safetensors + <NAME>.json.

    nice -n 19 env OMP_NUM_THREADS=1 python scripts/train_evaluator.py fmnist-net
    python scripts/train_evaluator.py digits-net --epochs 40

Recipe: AdamW with a one-cycle learning rate (Smith & Topin 2019), label smoothing 0.1, and light augmentation —
random shifts of up to 2 px (1 px for the 8x8 digits; zero padding + random crop) and, for Fashion-MNIST only, horizontal flips.
Trained on the dataset's train split; the test split is used once, at the end, for the recorded accuracy.
Deterministic for a given --seed and thread count.

Evaluators with a colour head (`fmnist-color-net`, `scenes-cell-net`) add a second cross-entropy term for the
colour (label smoothing 0.1; cells without a garment carry no colour label). `scenes-cell-net` re-tints every training garment with a random
colour (the training scenes lack the held-out colour-class pairs, which the class head would otherwise learn) and trains on the four
32x32 cells of each 64x64 `scenes` canvas (class 10 = empty cell); its record also holds the test accuracy on
cells with seen and with held-out colour-class pairs, and on empty cells.
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

DEFAULT_EPOCHS = {"fmnist-net": 14, "mnist-net": 6, "digits-net": 60, "fmnist-color-net": 4, "scenes-cell-net": 3}


def training_data(name: str, split: str, data_dir: str = "") -> dict:
    """{"x": uint8 (N, C, H, W), "y": (N,), "color": (N,) (-1: no colour) or None, "heldout": bool (N,) or None,
    "classes": [...]} of evaluator `name`'s dataset split (scene cells for source "scene-cells")."""
    spec = EVALUATORS[name]
    if spec.source == "scene-cells":
        from genlab.data.scenes import HELDOUT_PAIRS
        from genlab.metrics.scenes import cell_crops, cell_targets, heldout_cells

        data = load_dataset(spec.dataset, split, data_dir=data_dir, image_size=2 * spec.image_size)
        cls, col = cell_targets(data.extra["obj_classes"], data.extra["obj_colors"], data.extra["obj_cells"])
        return {"x": cell_crops(data.x, spec.image_size), "y": cls.reshape(-1), "color": col.reshape(-1),
                "heldout": heldout_cells(cls, col, HELDOUT_PAIRS).reshape(-1), "classes": [*data.classes, "empty"]}
    data = load_dataset(spec.dataset, split, data_dir=data_dir)
    color = data.extra.get("color") if spec.num_colors else None
    return {"x": data.x, "y": data.y, "color": color, "heldout": None, "classes": data.classes}


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


def recolor(x: torch.Tensor, color: torch.Tensor, *, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Re-tint tinted garments uint8 (B, 3, H, W) with random colours (`derived.tint` of `derived.untint`); colour
    labels -1 (empty cells: black, unchanged) stay -1. Every class then meets every colour, held-out pairs too."""
    from genlab.data.derived import COLORS, tint, untint

    new = torch.randint(0, len(COLORS), (len(x),), generator=generator)
    out = torch.from_numpy(tint(untint(x.numpy()), new.numpy()))
    return out, torch.where(color >= 0, new, color)


@torch.no_grad()
def accuracy(model: Evaluator, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> float:
    model.eval()
    correct = sum((model.logits(x[i : i + batch_size]).argmax(1) == y[i : i + batch_size]).sum().item()
                  for i in range(0, len(x), batch_size))  # fmt: skip
    return correct / len(x)


@torch.no_grad()
def predictions(model: Evaluator, x: torch.Tensor, batch_size: int = 1000) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(class predictions (N,), colour predictions (N,) or None) of uint8 images."""
    model.eval()
    cls, col = [], []
    for i in range(0, len(x), batch_size):
        out = model.outputs(x[i : i + batch_size])
        cls.append(out["logits"].argmax(1))
        if "color_logits" in out:
            col.append(out["color_logits"].argmax(1))
    return torch.cat(cls), (torch.cat(col) if col else None)


def accuracies(model: Evaluator, data: dict) -> dict[str, float]:
    """Class accuracy, colour accuracy (where a colour label exists) and, for scene cells, both on the cells with
    seen / held-out colour-class pairs and the class accuracy on empty cells."""
    pc, pk = predictions(model, data["x"])
    y, color = data["y"], data["color"]
    out = {"test_accuracy": (pc == y).double().mean().item()}
    if pk is not None and color is not None:
        has = color >= 0
        out["test_color_accuracy"] = (pk == color)[has].double().mean().item()
        if data["heldout"] is not None:
            for key, sel in (("seen", has & ~data["heldout"]), ("heldout", data["heldout"])):
                out[f"test_accuracy_{key}"] = (pc == y)[sel].double().mean().item()
                out[f"test_color_accuracy_{key}"] = (pk == color)[sel].double().mean().item()
                out[f"n_test_{key}"] = int(sel.sum())
            out["test_accuracy_empty"] = (pc == y)[~has].double().mean().item()
            out["n_test_empty"] = int((~has).sum())
    return {k: (round(v, 5) if isinstance(v, float) else v) for k, v in out.items()}


def train(name: str, *, epochs: int, seed: int, batch_size: int, lr: float, weight_decay: float, data_dir: str = "",
          log=lambda msg: print(msg, flush=True), time_steps: int = 0) -> tuple[Evaluator, dict]:  # fmt: skip
    """Train evaluator `name`; returns the model (eval mode) and the record fields for `save_evaluator`."""
    spec = EVALUATORS[name]
    train_set = training_data(name, "train", data_dir)
    test_set = training_data(name, "test", data_dir)
    assert list(train_set["x"].shape[1:]) == [spec.in_channels, spec.image_size, spec.image_size], train_set["x"].shape
    n_train = len(train_set["x"])

    torch.manual_seed(seed)
    model = Evaluator(spec.in_channels, spec.image_size, spec.num_classes, spec.widths, spec.convs, spec.feature_dim,
                      num_colors=spec.num_colors)  # fmt: skip
    # No weight decay on BatchNorm parameters and biases (they are scales and offsets, not weights).
    decay = [p for p in model.parameters() if p.dim() > 1]
    no_decay = [p for p in model.parameters() if p.dim() <= 1]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=lr)  # fmt: skip
    steps_per_epoch = n_train // batch_size  # drop the last partial batch: BatchNorm dislikes tiny batches
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch, pct_start=0.2)
    g = torch.Generator().manual_seed(seed)
    t0 = time.time()
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(n_train, generator=g)
        total, n = 0.0, 0
        for i in range(steps_per_epoch):
            idx = perm[i * batch_size : (i + 1) * batch_size]
            x, color = train_set["x"][idx], train_set["color"][idx] if spec.num_colors else None
            if spec.recolor:
                x, color = recolor(x, color, generator=g)
            x = augment(x, pad=spec.shift, hflip=spec.hflip, generator=g)
            out = model.forward_heads(to_float(x))
            loss = F.cross_entropy(out["logits"], train_set["y"][idx], label_smoothing=0.1)
            if spec.num_colors:  # colour head; -1 (an empty scene cell) carries no colour label
                loss = loss + F.cross_entropy(out["color_logits"], color, ignore_index=-1,
                                              label_smoothing=0.1)  # fmt: skip
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total, n = total + loss.item() * len(idx), n + len(idx)
            if time_steps and i + 1 == time_steps:  # --time-epoch: estimate, then stop
                per_step = (time.time() - t0) / time_steps
                log(f"{name}: {per_step * 1000:.0f} ms/step, about {per_step * steps_per_epoch:.0f} s per epoch "
                    f"({steps_per_epoch} steps of {batch_size})")
                return model.eval(), {}
        log(f"epoch {epoch + 1}/{epochs}  loss {total / n:.4f}  {time.time() - t0:.0f}s")
    test = accuracies(model, test_set)
    train_acc = accuracy(model, train_set["x"][:10000], train_set["y"][:10000])
    log(f"{name}: test {test} (train class accuracy, first 10k: {train_acc:.4f})")
    training = {
        "epochs": epochs, "seed": seed, "batch_size": batch_size, "lr": lr, "weight_decay": weight_decay,
        "optimizer": "AdamW + OneCycleLR", "label_smoothing": 0.1,
        "augment": f"shift<={spec.shift}px" + (", hflip" if spec.hflip else ""),
        "seconds": round(time.time() - t0, 1), "torch": torch.__version__,
    }  # fmt: skip
    info = {
        **test,
        "train_accuracy_first10k": round(train_acc, 5),
        "n_train": n_train,
        "n_test": len(test_set["x"]),
        "classes": train_set["classes"],
        "training": training,
    }
    if spec.num_colors:
        from genlab.data.derived import COLORS

        info["colors"] = list(COLORS)
    if spec.source != "images":
        info["source"] = spec.source
    return model.eval(), info


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("name", help=f"one of: {', '.join(EVALUATORS)}")
    p.add_argument("--epochs", type=int, default=0, help="default: " + ", ".join(f"{k} {v}" for k, v in DEFAULT_EPOCHS.items()))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--time-epoch", action="store_true", help="time 50 training steps, print the estimated epoch time, "
                   "and exit without saving")
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
                        weight_decay=args.weight_decay, data_dir=args.data_dir,
                        time_steps=50 if args.time_epoch else 0)  # fmt: skip
    if args.time_epoch:
        return 0
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
