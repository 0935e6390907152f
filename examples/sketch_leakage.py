"""A sketched gradient leaks the training input when the seed is known; the DP mode stops it.

    PYTHONPATH=. python examples/sketch_leakage.py [--images 4] [--ratio 4]

Two workers all-reduce sketched gradients of one digit each (a small
64-16-10 sigmoid MLP). Worker 1 is honest but curious: it knows the shared seed
(every rank must, to de-sketch), so it rebuilds ``R``, subtracts its own payload
from the all-reduced sum, and runs gradient matching in sketch space (DLG, Zhu
et al. 2019; :func:`commlib.privacy.attacks.reconstruct`) to recover worker 0's
image. Printed: the reconstruction MSE against the true (standardised) image,
without protection (:class:`commlib.compress.sketch.Sketch`, orthonormal rows)
and with :class:`commlib.privacy.DPSketch` (clip to C = 1, noise N(0, z²C²) added
on worker 0 before the all-reduce), next to the MSE of guessing the mean image.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch import nn

from commlib.comm.collectives import ordered_sum
from commlib.compress import TensorContext
from commlib.compress.sketch import Sketch
from commlib.privacy import DPSketch
from commlib.privacy.attacks import reconstruct
from commlib.train import load_digits
from commlib.train.models import init_


def flat_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    grads = torch.autograd.grad(F.cross_entropy(model(x), y), list(model.parameters()))
    return torch.cat([g.reshape(-1) for g in grads]).view(1, -1)


def attack(mechanism: Sketch | DPSketch, model: nn.Module, victim: tuple, peer: tuple, max_norm: float | None,
           bounds: tuple, step: int) -> float:
    """One step of a 2-worker all-reduce; worker 1 reconstructs worker 0's input. Returns the MSE."""
    d = sum(p.numel() for p in model.parameters())
    ctxs = [TensorContext("model", step, 0, r, 2) for r in range(2)]
    payloads = [mechanism.encode(flat_gradient(model, *batch), ctx) for batch, ctx in zip((victim, peer), ctxs)]
    total = ordered_sum(payloads)  # what the all-reduce delivers to every rank
    observed = total - payloads[1]  # worker 1 removes its own contribution
    op = mechanism.operator(d, ctxs[1])  # the seed is shared: worker 1 builds the same R
    x, y = victim
    guess = reconstruct(model, op, observed, y, tuple(x.shape), max_norm=max_norm, iterations=20, bounds=bounds)
    return float((guess - x).pow(2).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--ratio", type=float, default=4.0, help="d/s")
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = load_digits()
    model = init_(nn.Sequential(nn.Linear(64, 16), nn.Sigmoid(), nn.Linear(16, 10)), seed=0)
    d = sum(p.numel() for p in model.parameters())
    bounds = (data.x_train.min(0).values, data.x_train.max(0).values)
    settings = [("sketch, no noise", Sketch(ratio=args.ratio, mode="projection"), None)]
    settings += [(f"DP sketch, z = {z}", DPSketch(noise_multiplier=z, max_norm=1.0, noise_seed=2024, ratio=args.ratio),
                  1.0) for z in (0.1, 1.0)]
    print(f"model: {d} parameters, sketch: {Sketch(ratio=args.ratio).sketch_size(d)} values (d/s = {args.ratio})")
    print(f"{'image':>5}  {'guess mean':>10}  " + "  ".join(f"{name:>18}" for name, _, _ in settings))
    for i in range(args.images):
        victim = (data.x_train[2 * i : 2 * i + 1], data.y_train[2 * i : 2 * i + 1])
        peer = (data.x_train[2 * i + 1 : 2 * i + 2], data.y_train[2 * i + 1 : 2 * i + 2])
        mses = [attack(mech, model, victim, peer, c, bounds, step=i) for _, mech, c in settings]
        baseline = float(victim[0].pow(2).mean())
        print(f"{i:>5}  {baseline:>10.3g}  " + "  ".join(f"{m:>18.3g}" for m in mses))
    print("reconstruction MSE to the true image (standardised pixels); lower = more leakage")


if __name__ == "__main__":
    main()
