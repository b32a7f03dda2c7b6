"""Likelihood models side by side on Fashion-MNIST: bits/dim on the test set beside the FID of their samples,
the out-of-distribution check of Nalisnick et al. (2019), and what one sample costs.

Rows (each trained with `train.max_minutes=M` from its preset; runs kept under --work and reused):
  gmm           pixel-space Gaussian mixture (closed form)                       exact
  vae elbo      VAE, IWAE with k = 1 (the ELBO)                                    bound
  vae iwae      VAE, IWAE with k = --iwae-k (Burda et al. 2016)                    bound
  realnvp       flow, checkerboard + channel couplings (Dinh et al. 2017)          exact (dequantised: a bound on P(x))
  glow          flow, actnorm + 1x1 conv + couplings (Kingma & Dhariwal 2018)      exact (dequantised)
  pixelcnn      gated PixelCNN over 8-bit pixels (van den Oord et al. 2016)         exact
  vqvae+prior   PixelCNN prior over a VQ-VAE's 7x7 codes                          bound (see below)

Bits/dim = -log P(x) / (784 ln 2) over the first --n-nll test images (IWAE: --n-iwae images). The VQ-VAE's
decoder is deterministic (trained on MSE), so this benchmark gives it the decoder likelihood
p(x | z) = N(x; dec(z), s^2 I) with one s fitted by maximum likelihood on 5,000 training reconstructions, then
log p(x) >= log p(x | z_q(x)) + log P_prior(z_q(x)) (the ELBO of a one-hot posterior, whose entropy is 0),
plus the 8-bit bin offset of `genlab.dequantization`. This is a bound for *that* model; a VQ-VAE trained with
a likelihood decoder would do better.

FID and KID: protocol `fmnist` (fmnist-net features) on --n-fid samples against the test split (PixelCNN:
--n-fid-slow, its sampling takes 784 network evaluations); the data-vs-data floor at each n is in the table's
note. FID is biased upwards at small n, KID is not, so KID is the column to compare across rows of different n.
Sampling cost: seconds per image drawing 64 at once with --threads threads.

OOD (Nalisnick et al. 2019, "Do Deep Generative Models Know What They Don't Know?", Fig. 1 / Sec. 3: a Glow and
a PixelCNN trained on Fashion-MNIST assign *higher* likelihood to MNIST test digits): MNIST itself is not on
this machine, so the stand-in is scikit-learn's 8x8 digits, upsampled to 20x20 (bilinear) and centred in
28x28 as MNIST digits are, plus uniform noise. The table gives each model's mean bits/dim per set and the AUROC
of "-log p(x) flags the outlier" (0.5 = chance; below 0.5 = the paradox: outliers look *more* likely).

Run:  flock /tmp/genlab-cpu.lock .venv/bin/python bench/likelihood.py --minutes 1.5
JSON + Markdown: bench/results/likelihood.{json,md}; pictures: docs/img/likelihood-*.png
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
D = 784
TRAIN = {  # run -> (family, preset, overrides); "{work}" is the work directory
    "gmm": ("gmm", "gmm-fmnist", ["model.max_fit=20000"]),
    "vae": ("vae", "vae-fmnist", []),
    "realnvp": ("flow", "flow-fmnist", ["model.variant=realnvp", "model.depth=2"]),
    "glow": ("flow", "flow-fmnist", []),
    "pixelcnn": ("pixelcnn", "pixelcnn-fmnist", []),
    "vqvae": ("vqvae", "vqvae-fmnist", []),
    "prior": ("pixelcnn", "pixelcnn-vqvae-fmnist", ["model.vqvae={work}/vqvae"]),
}
TINY = {  # --tiny: networks small enough to check the script end to end in a minute or two
    "gmm": ["model.max_fit=2000"], "vae": ["model.channels=8"], "realnvp": ["model.hidden=8"],
    "glow": ["model.hidden=8", "model.depth=1"], "pixelcnn": ["model.channels=8", "model.layers=1", "model.kernel=3"],
    "vqvae": ["model.channels=8"], "prior": ["model.channels=8", "model.layers=1", "model.kernel=3"],
}
ROWS = ["gmm", "vae elbo", "vae iwae", "realnvp", "glow", "pixelcnn", "vqvae+prior"]
PUBLISHED = (  # the MNIST anchors; the table itself could not be opened here (see docs/likelihood.md)
    "MNIST anchors, as the issue gives them (RealNVP 1.06, Glow 1.05, FFJORD 0.99 bits/dim; the comparison table of "
    "Grathwohl et al. 2019, FFJORD, arXiv:1810.01367 -- not verified here: the stored copies of the paper did not "
    "include its tables). No standard Fashion-MNIST numbers exist; the rows above are new.")


def train(work: Path, name: str, minutes: float, threads: int, tiny: bool = False) -> Path:
    out = work / name
    if (out / "run.json").exists() and json.loads((out / "run.json").read_text()).get("status") == "done":
        return out  # reuse
    family, preset, extra = TRAIN[name]
    cmd = [sys.executable, "-m", "genlab", "train", family, "--threads", str(threads), "--config", preset,
           "--out", str(out), f"train.max_minutes={minutes}", "train.trackers=none", "train.n_samples=16",
           *[e.format(work=work) for e in extra], *(TINY[name] if tiny else [])]
    print("#", " ".join(cmd[1:]), flush=True)
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"training {name} failed:\n{proc.stderr[-3000:]}")
    return out


def fmnist(split: str, n: int) -> torch.Tensor:
    from genlab.data import load_dataset

    return load_dataset("fashion-mnist", split).batch(torch.arange(n))["x"]


def digits28(n: int) -> torch.Tensor:
    """sklearn's 8x8 digits as MNIST-like 28x28 8-bit images: ink white on black, 20x20 centred (MNIST's box)."""
    import torch.nn.functional as F
    from sklearn.datasets import load_digits

    from genlab.data import to_float, to_uint8

    d = torch.tensor(load_digits().images[:n], dtype=torch.float32)[:, None] / 16  # (N, 1, 8, 8) in [0, 1]
    x = F.pad(F.interpolate(d, size=(20, 20), mode="bilinear", align_corners=False).clamp(0, 1), (4, 4, 4, 4))
    return to_float(to_uint8(x * 2 - 1))  # on the 8-bit levels, as every test image is


def noise(n: int) -> torch.Tensor:
    from genlab.data import to_float

    g = torch.Generator().manual_seed(0)
    return to_float(torch.randint(0, 256, (n, 1, 28, 28), generator=g, dtype=torch.uint8))


@torch.no_grad()
def log_lik(row: str, runs: dict, x: torch.Tensor, *, k: int | None = None, chunk: int = 250) -> torch.Tensor:
    """log P(x) (N,) in nats for one row."""
    from genlab.rng import derive_seed

    out = []
    for i in range(0, len(x), chunk):
        g = torch.Generator().manual_seed(derive_seed(0, "nll", i))
        xb = x[i : i + chunk]
        if row.startswith("vae"):
            r = runs["vae"]
            out.append(r.family.log_likelihood(r.model, xb, k=k, generator=g))
        elif row == "vqvae+prior":
            out.append(vq_bound(runs["prior"], xb))
        else:
            r = runs[row]
            out.append(r.family.log_likelihood(r.model, xb, generator=g))
    return torch.cat(out).double()


def decoder_sigma(prior_run) -> float:
    """ML std of p(x | z) = N(dec(z_q(x)), s^2 I) on 5,000 training images: s^2 = mean squared error."""
    m = prior_run.model
    x = fmnist("train", 5000)
    err = torch.cat([(m.decode_indices(m.vqvae, m.encode_to_indices(m.vqvae, x[i : i + 500])) - x[i : i + 500])
                     .pow(2).flatten(1) for i in range(0, len(x), 500)])
    return float(err.mean().sqrt())


def vq_bound(prior_run, x: torch.Tensor) -> torch.Tensor:
    """log p(x | z_q(x)) + log P(z_q(x)) + the 8-bit bin offset, in nats (see the module docstring)."""
    from genlab.dequantization import discrete_log_likelihood

    m, fam = prior_run.model, prior_run.family
    s = prior_run.sigma
    codes = fam.variables(m, x)
    log_prior = fam.log_prob(m, codes)
    mean = m.decode_indices(m.vqvae, codes.reshape(len(x), *m.code_shape))
    log_px = (-0.5 * ((x - mean) / s).pow(2) - math.log(s) - 0.5 * math.log(2 * math.pi)).flatten(1).sum(1)
    return discrete_log_likelihood(log_px, D) + log_prior


def bpd(ll: torch.Tensor) -> float:
    from genlab.metrics.likelihood import bits_per_dim

    return float(bits_per_dim(ll.mean(), D))


def auroc(inlier_ll: torch.Tensor, outlier_ll: torch.Tensor) -> float:
    """P(-log p(outlier) > -log p(inlier)): how well the NLL flags the outlier set."""
    from sklearn.metrics import roc_auc_score

    scores = torch.cat([-inlier_ll, -outlier_ll]).numpy()
    labels = np.r_[np.zeros(len(inlier_ll)), np.ones(len(outlier_ll))]
    return float(roc_auc_score(labels, scores))


def sample_run(row: str, runs: dict):
    return {"vae elbo": runs["vae"], "vae iwae": None, "vqvae+prior": runs["prior"]}.get(row, runs.get(row))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=1.5, help="training minutes per run")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n-nll", type=int, default=2000, help="test images scored (exact rows and the ELBO)")
    ap.add_argument("--n-iwae", type=int, default=500, help="test images scored by the IWAE bound")
    ap.add_argument("--iwae-k", type=int, default=1000)
    ap.add_argument("--n-fid", type=int, default=1000)
    ap.add_argument("--n-fid-slow", type=int, default=256, help="samples for FID/KID of the pixel PixelCNN")
    ap.add_argument("--n-ood", type=int, default=1000)
    ap.add_argument("--tiny", action="store_true", help="tiny networks: check the script, not the models")
    ap.add_argument("--work", default="/work/runs/likelihood")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = ap.parse_args()
    os.environ.setdefault("GENLAB_PROGRESS", "0")
    torch.set_num_threads(args.threads)

    import genlab
    from genlab.data import to_uint8
    from genlab.data.png import save_grid
    from genlab.metrics import evaluate

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    runs = {}
    for name in TRAIN:
        runs[name] = genlab.load(train(work, name, args.minutes, args.threads, args.tiny))
    runs["prior"].sigma = decoder_sigma(runs["prior"])
    train_s = time.time() - t0

    test = fmnist("test", max(args.n_nll, args.n_ood))
    sets = {"fmnist test": test[: args.n_ood], "digits 28x28": digits28(args.n_ood), "uniform noise": noise(args.n_ood)}
    floors = {n: evaluate(to_uint8(fmnist("train", n)), None, protocol="fmnist", metrics=("fid", "kid"))
              for n in sorted({args.n_fid, args.n_fid_slow})}
    results = []
    for row in ROWS:
        print(f"# {row}", flush=True)
        r = sample_run(row, runs)
        kind = "bound" if row.startswith(("vae", "vqvae")) else "exact"
        rec = {"row": row, "kind": kind}
        if row == "vae iwae":
            ll = log_lik(row, runs, test[: args.n_iwae], k=args.iwae_k, chunk=50)
            rec.update(n_nll=args.n_iwae, k=args.iwae_k)
        else:
            ll = log_lik(row, runs, test[: args.n_nll], k=1 if row == "vae elbo" else None)
            rec.update(n_nll=args.n_nll)
        rec["nll_nats"], rec["bits_per_dim"] = -ll.mean().item(), bpd(ll)
        if r is not None:
            r_name = next(k for k, v in runs.items() if v is r)
            rec["steps"] = json.loads((work / r_name / "run.json").read_text()).get("step")
            t = time.time()
            x = r.sample(64, seed=1)
            rec["sample_s_per_image"] = (time.time() - t) / 64
            save_grid(to_uint8(x[:64]), ROOT / "docs" / "img" / f"likelihood-{row.split()[0].replace('+', '-')}.png")
            n_fid = args.n_fid_slow if row == "pixelcnn" else args.n_fid
            xs = torch.cat([x, r.sample(n_fid - 64, seed=2)]) if n_fid > 64 else x[:n_fid]
            ev = evaluate(to_uint8(xs), None, protocol="fmnist", metrics=("fid", "kid"))
            rec.update(fid=ev["fid"], kid=ev["kid"], n_fid=n_fid)
        if row != "vae iwae":  # OOD on every row with a likelihood (the IWAE row: its ELBO row stands in)
            lls = {name: (ll[: args.n_ood] if name == "fmnist test" else log_lik(row, runs, xs_, k=1 if row == "vae elbo" else None))
                   for name, xs_ in sets.items()}
            rec["ood_bpd"] = {name: bpd(v) for name, v in lls.items()}
            rec["ood_auroc"] = {name: auroc(lls["fmnist test"], v) for name, v in lls.items() if name != "fmnist test"}
        results.append(rec)
        print(json.dumps(rec), flush=True)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"minutes_per_run": args.minutes, "threads": args.threads, "train_and_load_s": round(train_s, 1),
            "floors_train_vs_test": {n: {"fid": f["fid"], "kid": f["kid"]} for n, f in floors.items()}, "vq_decoder_sigma": runs["prior"].sigma,
            "machine": "2-core CPU dev machine, no GPU", "published": PUBLISHED}
    (out / "likelihood.json").write_text(json.dumps({**meta, "rows": results}, indent=1))
    floor_text = "; ".join(f"n={n}: FID {f['fid']:.2f}, KID {f['kid']:.4f}" for n, f in floors.items())
    lines = [f"Fashion-MNIST test, {args.minutes} training minutes per run ({args.threads} threads); FID/KID under "
             f"protocol fmnist (data-vs-data floor, train vs test: {floor_text}).", "",
             "| model | kind | bits/dim | NLL (nats) | FID (n) | KID | s / sample | steps |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in results:
        fid = f"{r['fid']:.1f} ({r['n_fid']})" if "fid" in r else "(the elbo row's)"
        kid = f"{r['kid']:.4f}" if "kid" in r else ""
        cost = f"{r['sample_s_per_image']:.4f}" if "sample_s_per_image" in r else ""
        name = r["row"] + (f" (k={r['k']}, {r['n_nll']} images)" if "k" in r else "")
        lines.append(f"| {name} | {r['kind']} | {r['bits_per_dim']:.3f} | {r['nll_nats']:.1f} | {fid} | {kid} | {cost} | "
                     f"{r.get('steps', '')} |")
    lines += ["", PUBLISHED, "", "Out of distribution: mean bits/dim per set, and AUROC of -log p flagging the outlier set "
              "(< 0.5: the outliers look more likely than the training distribution's own test images).", "",
              "| model | fmnist test | digits 28x28 | uniform noise | AUROC digits | AUROC noise |",
              "| --- | --- | --- | --- | --- | --- |"]
    for r in results:
        if "ood_bpd" in r:
            b, a = r["ood_bpd"], r["ood_auroc"]
            lines.append(f"| {r['row']} | {b['fmnist test']:.2f} | {b['digits 28x28']:.2f} | {b['uniform noise']:.2f} | "
                         f"{a['digits 28x28']:.3f} | {a['uniform noise']:.3f} |")
    (out / "likelihood.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
