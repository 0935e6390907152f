"""Simulate Byzantine workers on one machine: 9 honest and 1 attacking worker train digits through robust rules.

    PYTHONPATH=. python examples/simulate_byzantine.py --steps 200

:func:`commlib.sim.byzantine.simulate_byzantine` runs n virtual workers in one process
(one vmapped backward pass for all of them); the last ``--byzantine`` workers send
``--attack`` instead of their momentum. Printed: test accuracy per rule — plain
averaging against robust rules, with and without an attack.
"""

from __future__ import annotations

import argparse

import torch

from commlib import robust
from commlib.sim.byzantine import ByzantineConfig, simulate_byzantine

ATTACKS = {"alie": lambda: robust.ALIE(z=4.0), "sign-flip": robust.SignFlip, "ipm": robust.IPM}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--honest", type=int, default=9)
    parser.add_argument("--byzantine", type=int, default=1)
    parser.add_argument("--attack", choices=sorted(ATTACKS), default="alie")
    args = parser.parse_args()

    torch.set_num_threads(1)
    f = args.byzantine
    rules = {"mean": robust.Mean(), "median": robust.CoordinateMedian(), "krum": robust.Krum(f=f),
             "flag": robust.FlagAggregator(m=2)}
    clean = ByzantineConfig(honest=args.honest, byzantine=0, steps=args.steps)
    attacked = ByzantineConfig(honest=args.honest, byzantine=f, steps=args.steps)
    print(f"{args.honest} honest workers, {f} sending {args.attack}, {args.steps} steps: test accuracy")
    print(f"{'rule':<8}{'no attack':>11}{'attacked':>10}")
    for name, rule in rules.items():
        without = simulate_byzantine(rule, None, clean).accuracy
        under = simulate_byzantine(rule, ATTACKS[args.attack](), attacked).accuracy
        print(f"{name:<8}{without:>11.3f}{under:>10.3f}")


if __name__ == "__main__":
    main()
