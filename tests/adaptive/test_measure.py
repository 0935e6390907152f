"""Measurements on the real process group: collective calibration and codec timing (adaptive/measure.py)."""

from __future__ import annotations

import pytest
import torch
from dist_utils import run_workers

from commlib.adaptive.measure import (
    calibrate,
    codec_seconds,
    exchange_local_seconds,
    measure_codec_times,
)
from commlib.adaptive.options import Option
from commlib.feedback import EF14


def _calibrate_worker(rank: int, world: int) -> dict:
    model = calibrate(sizes=(1 << 10, 1 << 16, 1 << 22), repeats=3)
    return model.state_dict()


def test_calibrate_fits_one_model_on_every_rank():
    results = run_workers(_calibrate_worker, 2, timeout=120)
    assert results[0] == results[1]
    for kind in ("allreduce", "allgather", "alltoall", "ordered"):
        assert results[0]["latency"][kind] >= 0 and results[0]["seconds_per_byte"][kind] > 0


def _flat_timings_worker(rank: int, world: int, flat: str) -> dict:
    """Timings of ``flat`` shrink with size (noise on a fast link); the others grow."""
    from commlib.adaptive import measure

    measure._time_collective = lambda kind, size, *rest: (1e-3 - size * 1e-12) if kind == flat else 1e-4 + size * 1e-9
    try:
        return {"fitted": sorted(calibrate(sizes=(1 << 10, 1 << 17, 1 << 20), repeats=1).seconds_per_byte)}
    except ValueError as err:
        return {"error": str(err)}


@pytest.mark.parametrize("flat", ["ordered", "alltoall", "allgather"])
def test_calibrate_leaves_an_optional_kind_it_cannot_fit_to_its_fallback(flat):
    results = run_workers(_flat_timings_worker, 2, flat, timeout=120)
    assert results[0] == results[1]
    if flat == "allgather":  # a kind every TimeCost needs: a clear error naming it
        assert "allgather fit failed" in results[0]["error"]
    else:
        assert results[0]["fitted"] == sorted({"allreduce", "allgather", "alltoall", "ordered"} - {flat})


def _noisy_small_sizes_worker(rank: int, world: int) -> dict:
    """The all-reduce is flat (noise) up to 1 MiB and grows beyond; the others grow everywhere."""
    from commlib.adaptive import measure

    timed: list[tuple[str, int]] = []

    def fake(kind, size, *rest):
        timed.append((kind, size))
        if kind == "allreduce":
            return 2e-3 - size * 1e-13 if size <= 1 << 20 else 2e-3 + size * 1e-9
        return 1e-4 + size * 1e-9

    measure._time_collective = fake
    model = calibrate(sizes=(1 << 10, 1 << 17, 1 << 20), repeats=1)
    return {"beta": model.seconds_per_byte["allreduce"], "extra": sorted({s for k, s in timed if s > 1 << 20})}


def test_calibrate_times_a_larger_size_when_a_required_fit_is_lost_in_noise():
    results = run_workers(_noisy_small_sizes_worker, 2, timeout=120)
    assert results[0] == results[1]
    assert results[0]["extra"] == [8 << 20] and results[0]["beta"] > 0  # one retry, at 8× the largest size


def test_calibrate_needs_a_process_group():
    with pytest.raises(ValueError, match="process group"):
        calibrate()


def test_measure_codec_times():
    options = [Option.topk(0.1), Option.qsgd(4, 128), Option.powersgd(2), Option("fp16")]
    table = measure_codec_times(options, shape=(64, 64), repeats=1)
    assert set(table) == {str(o) for o in options}
    assert all(enc >= 0 and dec >= 0 and enc + dec > 0 for enc, dec in table.values())  # enc: exchange − decode ≥ 0
    assert table["topk:0.1"][1] > 0 and table["powersgd:2"][1] == 0.0 and table["powersgd:2"][0] > 0
    with pytest.raises(ValueError, match="does not apply"):
        measure_codec_times([Option.powersgd(2)], shape=(64,))


def test_measure_codec_times_composes_its_two_timers(monkeypatch):
    """Casts: codec_seconds. fp32: the exchange's dense path. Others: exchange − one decode, and the decode."""
    from commlib.adaptive import measure

    calls = []

    def fake_codec(compressor, shape, repeats, seed, group):
        calls.append(("codec", type(compressor).__name__, tuple(shape), repeats, seed, group))
        return (7.0, 2.0)

    def fake_local(option, shape, repeats, seed, group, feedback=None, native_dense=False):
        calls.append(("local", str(option), tuple(shape), repeats, seed, group))
        assert feedback is None or isinstance(feedback, EF14)
        return 5.0

    monkeypatch.setattr(measure, "codec_seconds", fake_codec)
    monkeypatch.setattr(measure, "exchange_local_seconds", fake_local)
    options = [Option.topk(0.1), Option("fp16"), Option("fp32"), Option.powersgd(2)]
    table = measure.measure_codec_times(options, shape=(8, 8), repeats=2, seed=3)
    assert table == {"topk:0.1": (3.0, 2.0), "fp16": (7.0, 2.0), "fp32": (5.0, 0.0), "powersgd:2": (3.0, 2.0)}
    assert ("local", "fp16", (8, 8), 2, 3, None) not in calls and ("local", "fp32", (8, 8), 2, 3, None) in calls
    seen = []
    monkeypatch.setattr(measure, "exchange_local_seconds", lambda *a, feedback=None, **k: seen.append(feedback) or 5.0)
    ef = EF14()
    measure.measure_codec_times([Option.topk(0.1)], shape=(8, 8), feedback=ef)
    assert seen == [ef]  # the policy's error feedback reaches the exchange timer
    monkeypatch.setattr(measure, "exchange_local_seconds", lambda *a, **k: 1.0)
    assert measure.measure_codec_times([Option.topk(0.1)], shape=(8, 8))["topk:0.1"] == (0.0, 2.0)  # clamped at 0
    # with a group, a 16-bit cast's decode also pays the native 16-bit sum's extra time
    monkeypatch.setattr(measure, "half_reduce_seconds", lambda dtype, numel, group, repeats: 5.0)
    assert measure.measure_codec_times([Option("fp16")], shape=(8, 8), group="g")["fp16"] == (7.0, 7.0)


def test_exchange_local_seconds_times_the_real_exchange():

    for option in (Option.topk(0.1), Option("fp32"), Option.powersgd(2)):
        assert exchange_local_seconds(option, (32, 32), tensors=2, repeats=1) > 0
    with pytest.raises(ValueError, match="repeats"):
        exchange_local_seconds(Option("fp32"), (8, 8), repeats=0)
    with pytest.raises(ValueError, match="does not apply"):
        exchange_local_seconds(Option.powersgd(2), (64,))


def test_exchange_local_seconds_runs_the_policys_error_feedback_on_a_copy():
    """``feedback`` wraps each compressed tensor of the timed exchange (its passes count), never ``fp32``'s."""
    commits: list[str] = []

    class CountingEF14(EF14):
        def _commit(self, s, g, dl, dm):  # type: ignore[no-untyped-def]
            commits.append(str(g.shape))
            return super()._commit(s, g, dl, dm)

    given = CountingEF14()
    assert exchange_local_seconds(Option.topk(0.1), (16, 16), tensors=2, repeats=2, feedback=given) > 0
    assert len(commits) == 2 * 3 and given.keys() == []  # 2 tensors x (1 untimed + 2 timed); the copy keeps state
    commits.clear()
    exchange_local_seconds(Option("fp32"), (16, 16), tensors=2, repeats=1, feedback=given)
    assert commits == []
    with pytest.raises(ValueError, match="powersgd:RANK:ef"):  # PowerSGD takes no feedback wrapper
        exchange_local_seconds(Option.powersgd(2), (16, 16), repeats=1, feedback=given)


def test_casts_time_their_conversion_not_an_exchange(monkeypatch):
    """A cast's reduction is the calibrated all-reduce's: codec_seconds must not run its exchange."""
    from commlib.adaptive import measure
    from commlib.compress import FP16, Identity

    def refuse(*args, **kwargs):
        raise AssertionError("a cast's codec time ran an exchange")

    monkeypatch.setattr(measure, "_run_alone", refuse)
    for cast in (FP16(), Identity()):
        enc, dec = codec_seconds(cast, (64, 64), repeats=1)
        assert enc > 0 and dec > 0
    with pytest.raises(AssertionError, match="ran an exchange"):
        codec_seconds(__import__("commlib.compress", fromlist=["PowerSGD"]).PowerSGD(rank=2), (64, 64), repeats=1)


def _codec_worker(rank: int, world: int) -> dict:
    import torch.distributed as dist

    return measure_codec_times([Option.topk(0.1), Option.powersgd(2), Option("fp16")], shape=(128, 128), repeats=3,
                               group=dist.group.WORLD)


def _half_reduce_worker(rank: int, world: int) -> float:
    import torch.distributed as dist

    from commlib.adaptive.measure import half_reduce_seconds

    return half_reduce_seconds(torch.float16, 1 << 16, dist.group.WORLD, repeats=2)


def test_half_reduce_seconds_is_one_non_negative_number_on_every_rank():
    results = run_workers(_half_reduce_worker, 2, timeout=120)
    assert results[0] == results[1] and results[0] >= 0.0


def test_codec_times_under_contention_agree_on_every_rank():
    """With a group, all ranks time at once and max-reduce: every rank holds the same table."""
    results = run_workers(_codec_worker, 2, timeout=120)
    assert results[0] == results[1]
    assert all(enc > 0 for enc, _ in results[0].values())


def test_run_alone_answers_each_collective_in_place_as_a_world_of_one():
    from commlib.adaptive.measure import _run_alone
    from commlib.comm.collectives import AllGather, AllReduce, AllToAll, Broadcast

    a, b, c, d = torch.randn(5), torch.randn(3), torch.randn(1, 4), torch.randn(2)

    def protocol():
        summed = yield AllReduce(a, ordered=True)
        gathered, exchanged = yield (AllGather(b), AllToAll(c))
        sent = yield Broadcast(d)
        return summed, gathered, exchanged, sent

    summed, gathered, exchanged, sent = _run_alone(protocol())
    assert summed is a and exchanged is c and sent is d
    assert gathered.shape == (1, 3) and gathered.data_ptr() == b.data_ptr()  # a view, not a copy


def test_exchange_local_seconds_hands_a_refilled_ddp_style_bucket_over(monkeypatch):
    """As the DDP hook: views of one flat buffer, ``inplace=True``, the same values at the start of every run."""
    from commlib.comm.exchange import GradientExchange, adjacent_view

    seen = []
    real = GradientExchange.protocol

    def spy(self, named, step, inplace=False, last=False):
        seen.append((inplace, adjacent_view([t for _, t in named]) is not None, named[0][1].clone()))
        return real(self, named, step, inplace=inplace, last=last)

    monkeypatch.setattr(GradientExchange, "protocol", spy)
    for option, feedback in (("topk:0.1", EF14()), ("fp32", EF14()), ("powersgd:2:ef", None)):
        seen.clear()
        exchange_local_seconds(Option.parse(option), (32, 32), tensors=3, repeats=3, feedback=feedback,
                               native_dense=True)
        assert len(seen) == 4 and all(inplace and adjacent for inplace, adjacent, _ in seen)
        assert all(torch.equal(first, seen[0][2]) for _, _, first in seen)  # refilled: results written in are undone
