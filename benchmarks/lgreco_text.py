"""Uniform vs L-GreCo vs Accordion on a tiny character-level transformer (4 simulated workers).

Data: the text of ``pydoc_data/topics.py`` (shipped with Python: the reference manual's topic
pages), read with :mod:`importlib.resources`, nothing downloaded. The first ``--chars`` characters
are split 90 / 10 into training and validation text; the vocabulary is their character set.

Model: a pre-norm decoder — token and learned position embeddings (d = 64, context 64),
``--layers`` blocks of causal self-attention (4 heads, fused q/k/v projection, output
projection) and a 4× MLP, a final LayerNorm and a linear head. Every parameter is initialised
from its own seeded stream (never the global RNG). 11 matrices (with 2 layers) are compressed;
LayerNorm weights and biases are 1-D and always go dense.

Per family (top-k 0.1 with EF14, QSGD 4 bits without and with EF14, PowerSGD rank 4 without and
with its own error feedback), method
(``--methods``) and seed (methods in :mod:`lgreco_compare`):

1. each of the 4 workers draws ``--batch`` windows of 65 characters from the training text
   (a generator seeded by (seed, step, worker)), computes its next-character cross-entropy
   gradient on the shared replica, the simulator averages the gradients, Adam (lr 3e-3) steps;
2. after ``--steps`` steps, record the bytes worker 0 sent over the run and the validation loss
   (nats per character) on 64 fixed windows of the validation text.

Writes ``benchmarks/results/lgreco_text{_quick}{_first<N>}{_<tag>}.json``, ``.md`` and ``.png``; with ``--merge``,
the earlier file's runs of the (family, method) pairs not run now are kept (same settings required).
Run: ``PYTHONPATH=. python benchmarks/lgreco_text.py [--quick]``.
"""

from __future__ import annotations

import argparse
import importlib.resources
import math
import time

import torch
import torch.nn.functional as F
from lgreco_compare import (
    FAMILIES,
    METHODS,
    RESULTS,
    add_naming_arguments,
    describe,
    first_solve_note,
    make_simulator,
    merge_runs,
    results_name,
    run_all,
    summarize,
    write_results,
)
from torch import Tensor, nn

from commlib import rng
from commlib.sim import Simulator

CONTEXT, WIDTH, HEADS = 64, 64, 4


def load_text(chars: int) -> tuple[Tensor, Tensor, int]:
    """(training ids, validation ids, vocabulary size) from the first ``chars`` characters of pydoc's topics."""
    text = importlib.resources.files("pydoc_data").joinpath("topics.py").read_text(encoding="utf-8")[:chars]
    vocab = sorted(set(text))
    ids = torch.tensor([vocab.index(c) for c in text], dtype=torch.int64)
    cut = int(0.9 * len(ids))
    return ids[:cut], ids[cut:], len(vocab)


class Block(nn.Module):
    """Pre-norm transformer block: causal multi-head self-attention, then a 4× GELU MLP, both residual."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv, self.proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.fc1, self.fc2 = nn.Linear(width, 4 * width), nn.Linear(4 * width, width)

    def forward(self, x: Tensor) -> Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        att = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, d)
        x = x + self.proj(att)
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class CharTransformer(nn.Module):
    """Token + position embeddings, ``layers`` blocks, final LayerNorm, linear head over the vocabulary."""

    def __init__(self, vocab: int, layers: int, seed: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, WIDTH)
        self.position = nn.Parameter(torch.zeros(CONTEXT, WIDTH))
        self.blocks = nn.ModuleList(Block(WIDTH, HEADS) for _ in range(layers))
        self.norm = nn.LayerNorm(WIDTH)
        self.head = nn.Linear(WIDTH, vocab)
        with torch.no_grad():  # N(0, 0.02²) matrices, zero biases, unit LayerNorm gains; one stream per parameter
            for name, p in self.named_parameters():
                if p.dim() >= 2:
                    p.copy_(torch.randn(p.shape, generator=rng.generator(seed, 0, f"init/{name}")).mul_(0.02))
                else:
                    p.fill_(1.0 if name.endswith("norm1.weight") or name.endswith("norm2.weight")
                            or name == "norm.weight" else 0.0)

    def forward(self, ids: Tensor) -> Tensor:
        x = self.embed(ids) + self.position[: ids.shape[1]]
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))


def windows(ids: Tensor, starts: Tensor) -> tuple[Tensor, Tensor]:
    """Inputs and next-character targets of the windows of ``CONTEXT + 1`` characters at ``starts``."""
    chunk = ids[starts.unsqueeze(1) + torch.arange(CONTEXT + 1)]
    return chunk[:, :-1], chunk[:, 1:]


def loss_of(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    logits = model(x)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


def train(model: nn.Module, sim: Simulator, train_ids: Tensor, steps: int, batch: int, seed: int) -> None:
    """``steps`` steps: each worker's gradient on its own windows, averaged by ``sim``, then Adam."""
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    params = list(model.named_parameters())
    high = len(train_ids) - CONTEXT - 1
    for step in range(steps):
        per_worker = []
        for worker in range(sim.n_workers):
            starts = torch.randint(high, (batch,), generator=rng.generator(seed, step, f"batch/{worker}"))
            model.zero_grad(set_to_none=True)
            loss_of(model, *windows(train_ids, starts)).backward()
            per_worker.append([(name, p.grad.detach().clone()) for name, p in params])
        for (_, p), mean in zip(params, sim.exchange(per_worker)):
            p.grad = mean.view_as(p)
        optimizer.step()


@torch.no_grad()
def validation_loss(model: nn.Module, val_ids: Tensor) -> float:
    """Mean next-character cross-entropy (nats) on 64 evenly spaced windows of the validation text."""
    starts = torch.linspace(0, len(val_ids) - CONTEXT - 2, 64).long()
    return float(loss_of(model, *windows(val_ids, starts)))


def run(family: str, method: str, seed: int, data: tuple[Tensor, Tensor, int], args: argparse.Namespace) -> dict:
    train_ids, val_ids, vocab = data
    model = CharTransformer(vocab, args.layers, seed)
    sim = make_simulator(method, FAMILIES[family], seed, 4, args.period, args.window,
                         args.first_solve)
    start = time.perf_counter()
    train(model, sim, train_ids, args.steps, args.batch, seed)
    loss = validation_loss(model, val_ids)
    if not math.isfinite(loss):
        raise RuntimeError(f"{family}/{method} seed {seed} diverged")
    return {"family": family, "method": method, "seed": seed, "val_loss": loss,
            "seconds": time.perf_counter() - start, **describe(sim)}


def _run_task(task: tuple) -> dict:
    return run(*task)


def main() -> None:
    """Run every family × method × seed, then write the JSON, the markdown table and the plot."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--period", type=int, default=20)
    parser.add_argument("--window", type=int, default=10)
    add_naming_arguments(parser)
    parser.add_argument("--batch", type=int, default=8, help="windows per worker per step")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--chars", type=int, default=200_000)
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--merge", action="store_true",
                        help="keep the earlier results file's runs of the (family, method) pairs not run now")
    parser.add_argument("--jobs", type=int, default=1, help="runs in parallel processes")
    parser.add_argument("--quick", action="store_true", help="smoke run: 40 steps, 2 seeds, period 10, window 5")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.seeds, args.period, args.window = 40, 2, 10, 5
    torch.set_num_threads(1)
    data = load_text(args.chars)
    tasks = [(family, method, seed, data, args) for family in args.families for method in FAMILIES[family].methods()
             if method in args.methods for seed in range(args.seeds)]
    name = results_name("lgreco_text", args)
    runs = run_all(_run_task, tasks, args.jobs)
    if args.merge:
        runs = merge_runs(RESULTS / f"{name}.json", runs, args)
    rows = summarize(runs, "val_loss", higher_is_better=False)
    header = (f"char transformer ({args.layers} layers, d {WIDTH}, context {CONTEXT}, vocabulary {data[2]}) on "
              f"pydoc_data/topics.py, 4 simulated workers × {args.batch} windows, {args.steps} steps, Adam, α = 1, "
              f"period {args.period}, window {args.window}{first_solve_note(args)}; mean over {args.seeds} seeds "
              f"(bytes include the dense "
              f"warm-up and the uniform steps before the first decision)")
    write_results(name, args, runs, rows, "val_loss", header, header.split(" on ")[0], RESULTS)


if __name__ == "__main__":
    main()
