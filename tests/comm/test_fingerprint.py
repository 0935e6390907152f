"""Config fingerprints: equal configs pass, different ones fail on every rank."""

from __future__ import annotations

import pytest

from commlib.comm.fingerprint import fingerprint, verify_same_config
from commlib.comm.local import run_lockstep
from commlib.errors import ConfigMismatchError


def test_fingerprint_is_stable_and_sensitive() -> None:
    a = {"name": "topk", "density": 0.1}
    assert fingerprint(a) == fingerprint(dict(reversed(list(a.items()))))
    assert fingerprint(a) != fingerprint({"name": "topk", "density": 0.2})


def test_same_configs_pass() -> None:
    cfg = {"name": "qsgd", "bits": 4}
    assert run_lockstep([verify_same_config(cfg, r) for r in range(3)]) == [None, None, None]


def test_every_rank_raises_on_mismatch() -> None:
    import torch

    configs = [{"bits": 4}, {"bits": 4}, {"bits": 8}]
    protocols = [verify_same_config(c, r) for r, c in enumerate(configs)]
    gathered = torch.stack([next(p).tensor for p in protocols])
    for rank, proto in enumerate(protocols):
        with pytest.raises(ConfigMismatchError, match=rf"ranks \[2\].*this is rank {rank}"):
            proto.send(gathered)
