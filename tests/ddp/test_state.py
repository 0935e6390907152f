"""CommState on a one-process gloo group: checkpoints and argument checks."""

from __future__ import annotations

import io
import os
import socket

import pytest
import torch
import torch.distributed as dist

from commlib import ddp
from commlib.compress import TopK
from commlib.train import mlp


@pytest.fixture(scope="module")
def group():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_needs_a_process_group() -> None:
    assert not dist.is_initialized()
    with pytest.raises(RuntimeError, match="process group"):
        ddp.CommState(mlp(), compressor=TopK(density=0.1))


def test_state_dict_loads_with_weights_only(group) -> None:
    state = ddp.CommState(mlp(), compressor=TopK(density=0.1))
    state.step = 7
    buf = io.BytesIO()
    torch.save(state.state_dict(), buf)
    buf.seek(0)
    fresh = ddp.CommState(mlp(), compressor=TopK(density=0.1))
    fresh.load_state_dict(torch.load(buf, weights_only=True))
    assert fresh.step == 7


def test_loading_another_config_is_refused(group) -> None:
    saved = ddp.CommState(mlp(), compressor=TopK(density=0.1)).state_dict()
    with pytest.raises(ValueError, match="config"):
        ddp.CommState(mlp(), compressor=TopK(density=0.2)).load_state_dict(saved)
    with pytest.raises(ValueError, match="checkpoint"):
        ddp.CommState(mlp(), compressor=TopK(density=0.1)).load_state_dict({"weights": 1})


def test_feedback_checkpoints_round_trip_and_must_match(group) -> None:
    from commlib.feedback import EF21

    state = ddp.CommState(mlp(), compressor=TopK(density=0.1), feedback=EF21())
    state.exchange.feedback.commit("0.weight", torch.ones(128, 64), torch.ones(128, 64), torch.ones(128, 64))
    buf = io.BytesIO()
    torch.save(state.state_dict(), buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    fresh = ddp.CommState(mlp(), compressor=TopK(density=0.1), feedback=EF21())
    fresh.load_state_dict(saved)
    assert torch.equal(fresh.exchange.feedback.get("0.weight")["h"], torch.ones(128, 64))
    assert fresh.memory_bytes() == {"feedback": 8 * 128 * 64}  # EF21: hᵢ and h in fp32
    with pytest.raises(ValueError, match="config"):
        ddp.CommState(mlp(), compressor=TopK(density=0.1)).load_state_dict(saved)


def test_bad_arguments(group) -> None:
    with pytest.raises(ValueError, match="start_step"):
        ddp.CommState(mlp(), compressor=TopK(density=0.1), start_step=0)
    state = ddp.CommState(mlp(), compressor=TopK(density=0.1))
    with pytest.raises(KeyError, match="not in the model"):
        state.name_of(torch.nn.Parameter(torch.zeros(1)))
