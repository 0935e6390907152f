"""compression_payoff: dense vs compressed exchange time from a TimeCost (commlib.adaptive.payoff)."""

from __future__ import annotations

import pytest

from commlib.adaptive.cost import TimeCost, traffic_factor
from commlib.adaptive.payoff import codec_seconds, collective_of, compression_payoff
from commlib.compress import FP16, QSGD, Identity, PowerSGD, Sketch, TopK

SHAPES = [(2048, 2048), (2048,), (10, 2048), (10,)]


def _cost(bytes_per_s: float, latency: float = 1e-4) -> TimeCost:
    return TimeCost(latency={"allreduce": latency, "allgather": latency},
                    seconds_per_byte={"allreduce": 1 / bytes_per_s, "allgather": 1 / bytes_per_s})


def test_slow_link_pays_fast_link_with_costly_codec_does_not() -> None:
    topk = TopK(density=0.01)
    slow = compression_payoff(topk, SHAPES, _cost(12.5e6), 4, codec=(2e-8, 1e-9))  # 100 Mbit/s
    fast = compression_payoff(topk, SHAPES, _cost(1.25e10), 4, codec=(2e-8, 1e-9))  # 100 Gbit/s
    assert slow.pays and slow.speedup > 5
    assert not fast.pays
    assert slow.compressed_tensors == fast.compressed_tensors == 2  # the 1-D tensors go dense


def test_prices_match_the_formula() -> None:
    cost, world, codec = _cost(1e8, latency=1e-3), 4, (3e-9, 2e-9)
    topk = TopK(density=0.01)
    got = compression_payoff(topk, [(512, 512)], cost, world, codec)
    numel = 512 * 512
    assert got.dense_s == pytest.approx(1e-3 + traffic_factor("allreduce", world) * 4 * numel / 1e8)
    wire = traffic_factor("allgather", world) * topk.wire_bytes(__import__("torch").Size((512, 512))).total
    assert got.compressed_s == pytest.approx(1e-3 + wire / 1e8 + numel * (3e-9 + world * 2e-9))


def test_powersgd_pays_two_latencies() -> None:
    no_bandwidth = TimeCost(latency={"allreduce": 1.0, "allgather": 1.0},
                            seconds_per_byte={"allreduce": 0.0, "allgather": 0.0})
    got = compression_payoff(PowerSGD(rank=4), [(256, 256)], no_bandwidth, 4)
    assert got.dense_s == pytest.approx(1.0) and got.compressed_s == pytest.approx(2.0) and not got.pays


def test_small_and_one_dimensional_tensors_go_through_the_ordered_dense_reduce() -> None:
    """Left dense in a compressed configuration, a small tensor is all-gathered ((n−1)·P), not ring-reduced."""
    got = compression_payoff(TopK(density=0.01), [(100,), (8, 8)], _cost(1e6, latency=0.0), 4, min_numel=256)
    assert got.compressed_tensors == 0 and not got.pays
    assert got.dense_s == pytest.approx(1.5 * 4 * 164 / 1e6)
    assert got.compressed_s == pytest.approx(3 * 4 * 164 / 1e6)


def test_large_ordered_all_reduces_have_ring_traffic() -> None:
    """PowerSGD rank 16 of 2048 x 2048: P and Q are 128 KiB, so each is an all-to-all + all-gather."""
    psgd = PowerSGD(rank=16)
    latency_only = TimeCost(latency={"allreduce": 1.0, "allgather": 1.0},
                            seconds_per_byte={"allreduce": 0.0, "allgather": 0.0})
    assert compression_payoff(psgd, [(2048, 2048)], latency_only, 4).compressed_s == pytest.approx(4.0)
    bandwidth_only = _cost(1e8, latency=0.0)
    got = compression_payoff(psgd, [(2048, 2048)], bandwidth_only, 4)
    assert got.compressed_s == pytest.approx(1.5 * 2 * 4 * 2048 * 16 / 1e8)


def test_a_cast_takes_every_tensor_through_its_native_all_reduce() -> None:
    got = compression_payoff(FP16(), [(100,), (512, 512)], _cost(1e8, latency=0.0), 4)
    assert got.compressed_tensors == 2
    assert got.compressed_s == pytest.approx(got.dense_s / 2)  # half the bytes, same ring


def test_collectives() -> None:
    assert collective_of(Identity()) == collective_of(FP16()) == "allreduce"
    assert {collective_of(c) for c in (TopK(density=0.1), QSGD(bits=4), PowerSGD(rank=2), Sketch())} == {"allgather"}


def test_codec_seconds_measures_positive_times() -> None:
    enc, dec = codec_seconds(TopK(density=0.01), (256, 256), repeats=1)
    assert enc > 0 and dec > 0
    enc, dec = codec_seconds(PowerSGD(rank=2), (256, 256), repeats=1)
    assert enc > 0 and dec == 0


def test_codec_seconds_is_the_cost_models_routine() -> None:
    from commlib.adaptive import measure, payoff

    assert payoff.codec_seconds is measure.codec_seconds


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="codec"):
        compression_payoff(TopK(density=0.01), SHAPES, _cost(1e8), 4, codec=(-1.0, 0.0))
    with pytest.raises(TypeError, match="TimeCost"):
        compression_payoff(TopK(density=0.01), SHAPES, object(), 4)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="repeats"):
        codec_seconds(TopK(density=0.01), (8, 8), repeats=0)
