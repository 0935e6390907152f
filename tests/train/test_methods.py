"""Method specs of the command line build the right objects and reject bad text with a clear message."""

from __future__ import annotations

import pytest

from commlib.compress import QSGD, Identity, PowerSGD, RandK, Sign, Sketch, TopK
from commlib.feedback import EF14, EF21SGDM, EControl
from commlib.train.methods import make_compressor, make_feedback


@pytest.mark.parametrize("spec, kind, attr, value", [
    ("fp32", Identity, None, None), ("sign", Sign, None, None), ("topk:0.05", TopK, "density", 0.05),
    ("randk:0.25", RandK, "density", 0.25), ("qsgd:4", QSGD, "bits", 4), ("powersgd:3", PowerSGD, "rank", 3),
    ("sketch:8", Sketch, "ratio", 8.0), (" TopK:0.5 ", TopK, "density", 0.5),
    ("powersgd:3:ef", PowerSGD, "error_feedback", True), ("powersgd:3", PowerSGD, "error_feedback", False),
])
def test_compressor_specs(spec, kind, attr, value):
    compressor = make_compressor(spec)
    assert type(compressor) is kind
    if attr is not None:
        assert getattr(compressor, attr) == value


@pytest.mark.parametrize("spec, message", [
    ("zip", "unknown compressor 'zip'"), ("topk", "takes one float parameter"), ("topk:x", "takes one float"),
    ("powersgd:1.5", "takes one int"), ("fp32:2", "takes no parameter"), ("", "non-empty string"),
    ("topk:2", "density"), ("powersgd:3:ef:ef", "takes one int"), ("topk:0.1:ef", "takes one float"),
])
def test_bad_compressor_specs(spec, message):
    with pytest.raises(ValueError, match=message):
        make_compressor(spec)


def test_feedback_specs():
    assert type(make_feedback("ef14")) is EF14
    assert make_feedback("econtrol:0.01").eta == 0.01
    assert make_feedback("econtrol").eta == EControl().eta
    assert make_feedback("ef21-sgdm:0.2").beta == 0.2 and type(make_feedback("ef21-sgdm")) is EF21SGDM
    for spec, message in (("ef99", "unknown feedback"), ("ef14:0.1", "takes no parameter"),
                          ("econtrol:x", "must be a number")):
        with pytest.raises(ValueError, match=message):
            make_feedback(spec)
