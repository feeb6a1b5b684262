"""The summary of an evaluation: accuracy, failure rates, latency percentiles, time per module."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from visprog.evaluation.records import FAILURES

__all__ = ["Summary", "summarize"]


@dataclass
class Summary:
    """What an evaluation found, over every item of the data set that has a record in the output file."""

    n: int
    correct: int
    accuracy: float  # over the scored items (those with an expected answer)
    failures: dict[str, int]
    latency: dict[str, float]  # p50, p90, p99 of the records' seconds (load + plan + run), in seconds
    module_seconds: dict[str, float]
    out_path: str = ""
    skipped: int = 0  # items found in the output file and not run again
    scored: int = -1  # items with an expected answer (-1: all of them)
    ran: int = -1  # items whose program ran to its end (no failure before the answer; -1: unknown)
    wall_seconds: float = 0.0  # the wall time of this invocation of evaluate
    evaluated: int = 0  # the items this invocation planned and ran (n less those found in the file)

    def __post_init__(self) -> None:
        if self.scored < 0:
            self.scored = self.n
        if self.ran < 0:
            self.ran = self.n - sum(v for k, v in self.failures.items() if k != "wrong_answer")

    @property
    def items_per_second(self) -> float:
        """This invocation's throughput: the items it evaluated over its wall time."""
        return self.evaluated / self.wall_seconds if self.wall_seconds > 0 else 0.0

    @property
    def failure_rates(self) -> dict[str, float]:
        return {k: (v / self.n if self.n else 0.0) for k, v in self.failures.items()}

    def to_dict(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "scored": self.scored,
            "correct": self.correct,
            "accuracy": self.accuracy,
            "ran": self.ran,
            "failures": dict(self.failures),
            "failure_rates": self.failure_rates,
            "latency": dict(self.latency),
            "module_seconds": dict(self.module_seconds),
            "out_path": self.out_path,
            "skipped": self.skipped,
            "evaluated": self.evaluated,
            "wall_seconds": self.wall_seconds,
            "items_per_second": self.items_per_second,
        }

    def to_table(self) -> str:
        rows = [("items", str(self.n))]
        if self.scored:
            rows.append(("accuracy", f"{self.accuracy:.1%} ({self.correct}/{self.scored})"))
        if self.scored < self.n:
            rows.append(("without an answer", f"{self.n - self.scored} (not scored)"))
        rows.append(("ran to the end", f"{self.ran / self.n if self.n else 0.0:.1%} ({self.ran})"))
        for kind in FAILURES:
            rows.append((kind, f"{self.failure_rates[kind]:.1%} ({self.failures[kind]})"))
        for p in ("p50", "p90", "p99"):
            rows.append((f"latency {p}", f"{self.latency[p] * 1000:.1f} ms"))
        rows.append(("wall time", f"{self.wall_seconds:.1f} s for the {self.evaluated} item(s) evaluated now"))
        rows.append(("throughput", f"{self.items_per_second:.2f} items/s"))
        for name, seconds in sorted(self.module_seconds.items(), key=lambda kv: -kv[1]):
            rows.append((f"time in {name}", f"{seconds:.3f} s"))
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def _percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0 to 1) of ``values``, interpolated between closest ranks (numpy's default); 0.0 for none."""
    if not values:
        return 0.0
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def _seconds(value: Any) -> float:
    """A record's time in seconds; 0.0 for what is not a finite number (a record edited by hand)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return 0.0
    return float(value)


def summarize(records: Iterable[Mapping[str, Any]], *, out_path: str = "", skipped: int = 0) -> Summary:
    """The :class:`Summary` of output records (one per item)."""
    recs = list(records)
    failures = {k: sum(1 for r in recs if r.get("failure") == k) for k in FAILURES}
    correct = sum(1 for r in recs if r.get("correct") is True)
    modules: dict[str, float] = {}
    for r in recs:
        timings = r.get("timings")
        for name, s in timings.items() if isinstance(timings, Mapping) else ():
            modules[str(name)] = modules.get(str(name), 0.0) + _seconds(s)
    seconds = [_seconds(r.get("seconds")) for r in recs]
    latency = {f"p{int(q * 100)}": _percentile(seconds, q) for q in (0.5, 0.9, 0.99)}
    n = len(recs)
    scored = sum(1 for r in recs if r.get("expected") is not None)
    ran = n - sum(v for k, v in failures.items() if k != "wrong_answer")
    accuracy = correct / scored if scored else 0.0
    return Summary(n, correct, accuracy, failures, latency, modules, out_path, skipped, scored=scored, ran=ran)
