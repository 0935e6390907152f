"""Options name real compressor configurations and report their real wire bytes."""

from __future__ import annotations

import pytest
import torch

from commlib.adaptive.options import Option, default_grid, option_grid, rank_range
from commlib.compress import BF16, FP16, QSGD, Identity, PowerSGD, TopK

SHAPES = [(7,), (64, 33), (16, 3, 3, 3), (1, 5000)]


@pytest.mark.parametrize(
    ("text", "compressor"),
    [
        ("topk:0.01", TopK(density=0.01)),
        ("qsgd:4x128", QSGD(bits=4, bucket_size=128)),
        ("qsgd:2x512:max", QSGD(bits=2, bucket_size=512, norm="max")),
        ("powersgd:4", PowerSGD(rank=4)),
        ("powersgd:4:ef", PowerSGD(rank=4, error_feedback=True)),
        ("fp16", FP16()),
        ("bf16", BF16()),
        ("fp32", Identity()),
    ],
)
def test_option_builds_its_compressor_and_reports_its_wire_bytes(text, compressor):
    opt = Option.parse(text)
    assert str(opt) == text and Option.parse(str(opt)) == opt
    assert opt.build().config() == compressor.config()
    assert opt.build() is not opt.build()  # fresh state each time
    for shape in SHAPES:
        applicable = opt.is_cast or compressor.compressible(torch.Size(shape))
        assert opt.applicable(shape) == applicable
        if applicable:
            assert opt.wire_bytes(shape) == compressor.wire_bytes(torch.Size(shape)).total


def test_collectives_and_rounds():
    assert Option.topk(0.1).collective == "allgather" and Option.qsgd(4).collective == "allgather"
    assert Option.powersgd(2).collective == "allreduce" and Option.powersgd(2).ordered
    assert Option.powersgd(2).rounds == 2 and Option.topk(0.1).rounds == 1
    assert Option("fp16").collective == "allreduce" and not Option("fp16").ordered


def test_text_form_is_exact():
    for density in (0.1, 1 / 3, 1e-5, 1, 0.123456789):
        opt = Option.topk(density)
        assert Option.parse(str(opt)) == opt
    assert str(Option.topk(0.01)) == "topk:0.01" and str(Option.topk(1)) == "topk:1"


def test_casts_apply_to_every_shape_and_powersgd_needs_a_matrix():
    assert Option("fp32").applicable(()) and Option("fp32").wire_bytes(()) == 4
    assert not Option.powersgd(2).applicable((10,))
    with pytest.raises(ValueError, match="does not apply"):
        Option.powersgd(2).wire_bytes((10,))


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("zip:3", "cannot parse"),
        ("topk:abc", "cannot parse"),
        ("topk:1.5", "density"),
        ("qsgd:3x128", "bits"),
        ("qsgd:4x0", "bucket_size"),
        ("qsgd:4x128:l1", "norm"),
        ("powersgd:0", "rank"),
        ("powersgd:4:xy", "only be 'ef'"),
        ("powersgd:4:ef:ef", "only be 'ef'"),
        ("fp16:2", "cannot parse"),
    ],
)
def test_bad_options_raise_value_error(text, match):
    with pytest.raises(ValueError, match=match):
        Option.parse(text)


def test_raw_constructor_validates():
    with pytest.raises(ValueError, match="unknown compression family"):
        Option("zip")
    with pytest.raises(ValueError, match="takes 1 parameter"):
        Option("topk", ())
    with pytest.raises(ValueError, match="tuple"):
        Option("topk", [0.1])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="cast family"):
        Option.cast("topk")
    with pytest.raises(ValueError, match="can only be 'ef'"):
        Option("powersgd", (4, "fb"))
    with pytest.raises(ValueError, match="takes 1 or 2 parameter"):
        Option("powersgd", (4, "ef", "ef"))
    with pytest.raises(ValueError, match="error_feedback must be a bool"):
        Option.powersgd(4, error_feedback=1)  # type: ignore[arg-type]


def test_powersgd_error_feedback_is_part_of_the_option():
    plain, ef = Option.powersgd(4), Option.powersgd(4, error_feedback=True)
    assert plain != ef and not plain.error_feedback and ef.error_feedback
    assert not Option.topk(0.1).error_feedback
    assert ef.build().error_feedback and not plain.build().error_feedback
    assert ef.wire_bytes((64, 33)) == plain.wire_bytes((64, 33))  # feedback sends nothing extra
    assert ef.rounds == 2 and ef.ordered and ef.collective == "allreduce"
    assert [str(o) for o in default_grid("powersgd:2:ef")] == ["powersgd:1:ef", "powersgd:2:ef", "powersgd:3:ef",
                                                               "powersgd:4:ef", "fp32"]
    assert [str(o) for o in option_grid(powersgd=(1, 2), powersgd_error_feedback=True, casts=())] == [
        "powersgd:1:ef", "powersgd:2:ef"]


def test_grids():
    assert rank_range(4) == (2, 3, 4, 5, 6, 7, 8)
    assert rank_range(32, 0.25, 4.0) == tuple(range(8, 129))
    assert rank_range(1) == (1, 2)
    with pytest.raises(ValueError, match="rank range"):
        rank_range(4, 2.0, 4.0)
    grid = option_grid(topk=(0.01, 0.1), qsgd_bits=(2, 4), qsgd_buckets=(64, 128), powersgd=(1,), casts=("fp16",))
    assert [str(o) for o in grid] == [
        "topk:0.01", "topk:0.1", "qsgd:2x64", "qsgd:2x128", "qsgd:4x64", "qsgd:4x128", "powersgd:1", "fp16",
    ]
    with pytest.raises(ValueError, match="duplicate"):
        option_grid(topk=(0.1, 0.1))
    assert [str(o) for o in default_grid("powersgd:4")][-1] == "fp32"
    assert [str(o) for o in default_grid("topk:0.5")] == ["topk:0.125", "topk:0.25", "topk:0.5", "topk:1", "fp32"]
    assert [str(o) for o in default_grid("qsgd:4x256")] == ["qsgd:2x256", "qsgd:4x256", "qsgd:8x256", "fp32"]
    assert [str(o) for o in default_grid("fp32")] == ["fp16", "bf16", "fp32"]
