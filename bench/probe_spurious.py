"""A first measurement of S10 (accuracy vs alpha_*) before the registered experiment exists.

Animal-mnist tiles (28 px) in 3x3 mosaics (84 px, patch 14 -> 36 tokens), spurious tiles from scikit-image's
grey images, correlated with the label in training (strength p), uniform at test; a random-initialised
depth-1 ViT trained with AdamW; test accuracy per alpha_* = k/9.

    PYTHONPATH=src OMP_NUM_THREADS=1 python bench/probe_spurious.py [--seeds 2] [--n 2000] [--steps 300]
"""
import argparse
import time

import numpy as np
import torch

from vitheory.data.packaged import animal_mnist
from vitheory.data.spurious import make_mosaics, spurious_sources
from vitheory.models.vit import ViT
from vitheory.seeding import derive_seed
from vitheory.train.vit_train import accuracy, to_tensor, train_vit


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--n_test", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--strength", type=float, default=0.9)
    a = ap.parse_args()
    torch.set_num_threads(1)
    x, y = animal_mnist()
    perm = np.random.default_rng(0).permutation(len(x))  # the file is sorted by class
    tr_x, tr_y, te_x, te_y = x[perm[:8000]], y[perm[:8000]], x[perm[8000:]], y[perm[8000:]]  # held-out test tiles
    src = spurious_sources()
    t0 = time.perf_counter()
    print(f"n={a.n} n_test={a.n_test} steps={a.steps} strength={a.strength}")
    for k in range(5, 10):
        accs = []
        for s in range(a.seeds):
            tr = make_mosaics(tr_x, tr_y, a.n, k, src, a.strength, True, derive_seed(s, "train", k))
            te = make_mosaics(te_x, te_y, a.n_test, k, src, a.strength, False, derive_seed(s, "test", k))
            torch.manual_seed(derive_seed(s, "init"))
            m = ViT(image_size=84, patch_size=14, in_chans=1, num_classes=10, dim=32, depth=1, heads=2)
            r = train_vit(m, to_tensor(tr.images), torch.from_numpy(tr.labels), a.steps, 64, 2e-3, s)
            accs.append(float("nan") if r.diverged else accuracy(m, to_tensor(te.images), torch.from_numpy(te.labels)))
        print(f"alpha_*={k / 9:.2f}  test acc mean {np.mean(accs):.3f}  min {np.min(accs):.3f}  max {np.max(accs):.3f}"
              f"  ({time.perf_counter() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
