"""Communication statistics: bytes sent and received, the dense equivalent, ratios and times, per step and in total."""

from __future__ import annotations

import logging
import threading
from dataclasses import asdict, dataclass, fields

from .exchange import BucketReport

__all__ = ["StepStats", "CommStats"]

logger = logging.getLogger("commlib")


@dataclass
class StepStats:
    """Sums over the buckets of one step (or of all steps, for the totals)."""

    steps: int = 0
    buckets: int = 0
    sent_bytes: int = 0
    received_bytes: int = 0
    dense_fp32_bytes: int = 0
    compressed_numel: int = 0
    dense_numel: int = 0
    non_finite_buckets: int = 0
    policy_sent_bytes: int = 0  # bytes sent for an adaptive policy's tensors …
    policy_predicted_bytes: int = 0  # … and what the policy's current choices predict for them
    compute_s: float = 0.0
    comm_s: float = 0.0
    collective_s: float = 0.0  # the exchange's collective rounds as timed by its clock (DDP; 0 in the simulator) …
    predicted_collective_s: float = 0.0  # … and as an adaptive policy's TimeCost predicts them (0 without one)

    def add_report(self, report: BucketReport, compute_s: float = 0.0, comm_s: float = 0.0) -> None:
        self.buckets += 1
        self.sent_bytes += report.sent
        self.received_bytes += report.received
        self.dense_fp32_bytes += report.dense_fp32
        self.compressed_numel += report.compressed_numel
        self.dense_numel += report.dense_numel
        self.non_finite_buckets += int(report.non_finite)
        self.policy_sent_bytes += report.policy_sent
        self.policy_predicted_bytes += report.policy_predicted
        self.collective_s += report.collective_s
        self.predicted_collective_s += report.predicted_collective_s
        self.compute_s += compute_s
        self.comm_s += comm_s

    def merge(self, other: StepStats) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    @property
    def ratio_vs_fp32(self) -> float:
        """Dense fp32 bytes over bytes sent (how many times less this rank sent)."""
        return self.dense_fp32_bytes / self.sent_bytes if self.sent_bytes else float("inf")

    @property
    def ratio_vs_fp16(self) -> float:
        return self.ratio_vs_fp32 / 2

    def as_dict(self) -> dict[str, float]:
        out: dict[str, float] = asdict(self)
        out["ratio_vs_fp32"] = self.ratio_vs_fp32
        out["ratio_vs_fp16"] = self.ratio_vs_fp16
        return out


class CommStats:
    """Per-step and cumulative statistics, filled by the runtime (thread-safe), logged every ``log_every`` steps."""

    def __init__(self, log_every: int = 0) -> None:
        self.log_every = log_every
        self.current = StepStats()
        self.last = StepStats()
        self.total = StepStats()
        self._lock = threading.Lock()

    def add_bucket(self, report: BucketReport, compute_s: float = 0.0, comm_s: float = 0.0) -> None:
        with self._lock:
            self.current.add_report(report, compute_s, comm_s)

    def end_step(self, step: int) -> None:
        """Close the step: its figures become ``last`` and join ``total``."""
        with self._lock:
            self.current.steps = 1
            self.last, self.current = self.current, StepStats()
            self.total.merge(self.last)
        if self.log_every and (step + 1) % self.log_every == 0:
            logger.info("commlib step %d: %s", step, self.summary())

    def as_dict(self) -> dict[str, object]:
        """``{"last": …, "total": …, "per_step": …}``: the last step, the totals, and totals averaged per step."""
        with self._lock:
            total = self.total.as_dict()
            steps = max(1, self.total.steps)
            per_step = {k: v / steps for k, v in total.items() if not k.startswith("ratio")}
            per_step.update(ratio_vs_fp32=total["ratio_vs_fp32"], ratio_vs_fp16=total["ratio_vs_fp16"])
            return {"last": self.last.as_dict(), "total": total, "per_step": per_step}

    def summary(self) -> str:
        d = self.as_dict()["per_step"]
        timed_ms, predicted_ms = d["collective_s"] * 1e3, d["predicted_collective_s"] * 1e3
        predicted = f", collectives {timed_ms:.2f} ms (predicted {predicted_ms:.2f} ms)" if predicted_ms else ""
        return (
            f"{self.total.steps} steps; per step: sent {d['sent_bytes'] / 1e3:.1f} kB, "
            f"received {d['received_bytes'] / 1e3:.1f} kB, dense fp32 {d['dense_fp32_bytes'] / 1e3:.1f} kB, "
            f"ratio {d['ratio_vs_fp32']:.1f}x vs fp32 ({d['ratio_vs_fp16']:.1f}x vs fp16), "
            f"compute {d['compute_s'] * 1e3:.2f} ms, comm {d['comm_s'] * 1e3:.2f} ms{predicted}"
        )

    def state_dict(self) -> dict[str, object]:
        return {"total": asdict(self.total)}

    def load_state_dict(self, state: dict[str, object]) -> None:
        self.total = StepStats(**state["total"])  # type: ignore[arg-type]
