"""Worker functions run in spawned gloo processes by the DDP tests (importable by the children)."""

from __future__ import annotations

import io

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

from commlib import ddp
from commlib.train import TrainConfig, load_digits, make_optimizer, mlp, train_ddp


def wrap(compressor, *, hidden: int = 128, depth: int = 2, bucket_cap_mb: float = 25.0, seed: int = 0,
         dtype: torch.dtype = torch.float32, **options):
    """A fresh DDP model with commlib's hook (``compressor=None``: no hook, DDP's built-in all-reduce)."""
    ddp_kwargs = {k: options.pop(k) for k in ("gradient_as_bucket_view", "static_graph") if k in options}
    model = mlp(hidden=hidden, depth=depth, seed=seed).to(dtype)
    wrapped = DDP(model, bucket_cap_mb=bucket_cap_mb, **ddp_kwargs)
    state = None
    if compressor is not None:
        state = ddp.CommState(wrapped, compressor=compressor, **options)
        wrapped.register_comm_hook(state, ddp.hook)
    return model, wrapped, state


def params(model) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def second_step_grads(rank: int, world: int, compressor, depth: int = 2, **options) -> list[torch.Tensor]:
    """Gradients after the 2nd backward (params unchanged in between), rank-specific data."""
    model, wrapped, _ = wrap(compressor, bucket_cap_mb=0.05, hidden=256, depth=depth, **options)
    data = load_digits()
    x, y = data.x_train[rank * 32 : (rank + 1) * 32], data.y_train[rank * 32 : (rank + 1) * 32]
    for _ in range(2):
        wrapped.zero_grad(set_to_none=True)
        F.cross_entropy(wrapped(x), y).backward()
    return [p.grad.clone() for p in model.parameters()]


def equivalence(rank: int, world: int, cases: dict) -> dict:
    """Second-step gradients of the reference (no hook) and of each named hook config."""
    out = {}
    for name, (compressor, options) in cases.items():
        out[name] = second_step_grads(rank, world, compressor, **options)
        out[f"{name}/reference"] = second_step_grads(rank, world, None, depth=options.get("depth", 2))
    return out


def train(rank: int, world: int, compressor, steps: int = 300, **options) -> dict:
    """Train the digits MLP; return accuracy, final params and stats."""
    model, wrapped, state = wrap(compressor, **options)
    cfg = TrainConfig(steps=steps)
    result = train_ddp(wrapped, make_optimizer(model, cfg), load_digits(), cfg, rank, world)
    return {"accuracy": result.accuracy, "params": params(model), "losses": result.losses,
            "stats": state.stats.as_dict() if state else None}


def train_many(rank: int, world: int, runs: dict) -> dict:
    return {name: train(rank, world, compressor, **options) for name, (compressor, options) in runs.items()}


def checkpoint_phase(rank: int, world: int, compressor, total: int, save_at: int | None, blob: bytes | None,
                     feedback=None) -> dict:
    """Uninterrupted (save_at=None, blob=None), first half (save_at set) or resumed (blob set)."""
    model, wrapped, state = wrap(compressor, bucket_cap_mb=0.05, hidden=256, feedback=feedback)
    cfg = TrainConfig(steps=total)
    opt = make_optimizer(model, cfg)
    data = load_digits()
    start = 0
    if blob is not None:
        ckpt = torch.load(io.BytesIO(blob[rank]), weights_only=True)
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        state.load_state_dict(ckpt["comm"])
        start = ckpt["step"]
    train_ddp(wrapped, opt, data, cfg, rank, world, start=start, stop=save_at)
    out: dict = {"params": params(model)}
    if save_at is not None:
        buf = io.BytesIO()
        torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "comm": state.state_dict(),
                    "step": save_at}, buf)
        out["blob"] = buf.getvalue()
    return out


def mismatched_config(rank: int, world: int, compressors: list) -> str:
    """Each rank gets its own compressor; returns the error each rank saw."""
    model, wrapped, _ = wrap(compressors[rank])
    data = load_digits()
    try:
        F.cross_entropy(wrapped(data.x_train[:8]), data.y_train[:8]).backward()
    except Exception as exc:  # noqa: BLE001 - the test inspects it
        return f"{type(exc).__name__}: {exc}"
    return "no error"


def non_finite(rank: int, world: int, compressor) -> dict:
    """Step 3 has a NaN input on rank 1 only; report grads and whether the compressor state moved."""
    model, wrapped, state = wrap(compressor, hidden=256, bucket_cap_mb=0.05)
    data = load_digits()
    x, y = data.x_train[rank * 16 : (rank + 1) * 16].clone(), data.y_train[rank * 16 : (rank + 1) * 16]
    for _ in range(3):
        wrapped.zero_grad()
        F.cross_entropy(wrapped(x), y).backward()
    before = {k: v.clone() for k, v in state.compressor.state_dict().get("q", {}).items()}
    if rank == 1:
        x[0, 0] = float("nan")
    wrapped.zero_grad()
    F.cross_entropy(wrapped(x), y).backward()
    after = state.compressor.state_dict().get("q", {})
    return {
        "all_grads_nan": all(bool(p.grad.isnan().any()) for p in model.parameters() if p.dim() > 1),
        "state_unchanged": all(torch.equal(before[k], after[k]) for k in before) and before.keys() == after.keys(),
        "state_size": len(before),
        "non_finite_buckets": state.stats.last.non_finite_buckets,
    }


def ddp_options(rank: int, world: int, compressor) -> dict:
    """The same TopK run under DDP options that must not change the bits, plus no_sync and bf16 runs."""
    out = {}
    for name, options in {"default": {}, "bucket_view": {"gradient_as_bucket_view": True},
                          "static_graph": {"static_graph": True}}.items():
        out[name] = train(rank, world, compressor, steps=12, bucket_cap_mb=0.05, hidden=256, **options)["params"]
    data = load_digits()
    for name, comp in {"nosync_hook": ddp_identity(), "nosync_ref": None}.items():
        model, wrapped, _ = wrap(comp, bucket_cap_mb=0.05, hidden=256)
        opt = make_optimizer(model, TrainConfig())
        for step in range(4):
            opt.zero_grad()
            for micro in range(3):
                lo = (step * 3 + micro) * world * 8 + rank * 8
                xb, yb = data.x_train[lo : lo + 8], data.y_train[lo : lo + 8]
                if micro < 2:
                    with wrapped.no_sync():
                        F.cross_entropy(wrapped(xb), yb).backward()
                else:
                    F.cross_entropy(wrapped(xb), yb).backward()
            opt.step()
        out[name] = params(model)
    model, wrapped, _ = wrap(compressor, dtype=torch.bfloat16, bucket_cap_mb=0.05, hidden=256)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for step in range(6):
        opt.zero_grad()
        lo = (step * world + rank) * 16
        xb, yb = data.x_train[lo : lo + 16].to(torch.bfloat16), data.y_train[lo : lo + 16]
        F.cross_entropy(wrapped(xb).float(), yb).backward()
        opt.step()
    out["bf16_grad_dtypes"] = {str(p.grad.dtype) for p in model.parameters()}
    out["bf16_params"] = params(model)
    return out


def ddp_identity():
    from commlib.compress import Identity

    return Identity()


def uneven_join(rank: int, world: int, compressor) -> dict:
    """Rank r trains on 4 + 2r batches under ``Join``: the joined ranks' zero buckets must not hang the hook."""
    from torch.distributed.algorithms.join import Join

    model, wrapped, state = wrap(compressor, hidden=256, bucket_cap_mb=0.05)
    opt = make_optimizer(model, TrainConfig())
    data = load_digits()
    with Join([wrapped]):
        for i in range(4 + 2 * rank):
            opt.zero_grad()
            lo = (i * world + rank) * 8
            F.cross_entropy(wrapped(data.x_train[lo : lo + 8]), data.y_train[lo : lo + 8]).backward()
            opt.step()
    dist.barrier()
    return {"params": params(model), "steps": state.step}
