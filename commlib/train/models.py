"""Small models for the reference training, initialised from a seeded generator (never the global RNG)."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..rng import generator

__all__ = ["mlp", "init_"]


def init_(model: nn.Module, seed: int) -> nn.Module:
    """Uniform(±1/√fan_in) for every parameter (biases use their layer's fan-in), each from its own keyed stream."""
    fan_in = {}
    for mod_name, mod in model.named_modules():
        if isinstance(mod, nn.Linear):
            for p_name, _ in mod.named_parameters(recurse=False):
                fan_in[f"{mod_name}.{p_name}" if mod_name else p_name] = mod.in_features
    with torch.no_grad():
        for name, p in model.named_parameters():
            bound = 1.0 / math.sqrt(fan_in.get(name, p.shape[-1] if p.dim() > 1 else p.numel()))
            u = torch.rand(p.shape, generator=generator(seed, 0, f"init/{name}"), dtype=torch.float32)
            p.copy_(u.mul_(2 * bound).sub_(bound))
    return model


def mlp(features: int = 64, classes: int = 10, hidden: int = 128, depth: int = 2, seed: int = 0) -> nn.Sequential:
    """``depth`` hidden layers of width ``hidden`` with ReLU, then a linear classifier."""
    layers: list[nn.Module] = []
    width = features
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    layers.append(nn.Linear(width, classes))
    return init_(nn.Sequential(*layers), seed)
