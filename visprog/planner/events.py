"""The planner's events: requests to the LLM, its replies, repair rounds, cache hits, the vote.

They share the :class:`~visprog.running.events.Event` base with the
interpreter's events, so one listener (``on_event=``) follows a question from
the first request to the last step. ``sample`` numbers the programs drawn for
one question (0 for the first); ``attempt`` numbers the requests for one
sample (1 for the first, then one more per repair round).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from visprog.running.events import Event

__all__ = ["CacheHit", "PlanFailed", "Planned", "RepairRound", "ReplyReceived", "RequestSent", "Voted"]


@dataclass(frozen=True)
class RequestSent(Event):
    """A request for a program went to the LLM (``messages`` chat messages)."""

    kind: ClassVar[str] = "request_sent"
    task: str
    text: str
    sample: int
    attempt: int
    messages: int


@dataclass(frozen=True)
class ReplyReceived(Event):
    """The LLM answered after ``seconds``; ``program`` is what was found in the ``reply``."""

    kind: ClassVar[str] = "reply_received"
    task: str
    sample: int
    attempt: int
    reply: str
    program: str
    seconds: float


@dataclass(frozen=True)
class RepairRound(Event):
    """The program of ``attempt`` does not parse or check: it goes back with these ``diagnostics``."""

    kind: ClassVar[str] = "repair_round"
    task: str
    sample: int
    attempt: int
    diagnostics: str


@dataclass(frozen=True)
class CacheHit(Event):
    """The plan cache held a program for this request; the LLM was not asked."""

    kind: ClassVar[str] = "cache_hit"
    task: str
    sample: int
    program: str


@dataclass(frozen=True)
class Planned(Event):
    """Sample ``sample`` has a program that checks, after ``attempts`` requests (0: from the cache)."""

    kind: ClassVar[str] = "planned"
    task: str
    sample: int
    program: str
    attempts: int


@dataclass(frozen=True)
class PlanFailed(Event):
    """Sample ``sample`` has no valid program after ``attempts`` requests; ``error`` says why."""

    kind: ClassVar[str] = "plan_failed"
    task: str
    sample: int
    attempts: int
    error: str


@dataclass(frozen=True)
class Voted(Event):
    """The answers of the runs that finished, and the one chosen: ``agreement`` is its share of them."""

    kind: ClassVar[str] = "voted"
    answers: tuple[str, ...]  # each run's answer, described
    winner: str
    agreement: float
    samples: int  # programs drawn, valid or not
