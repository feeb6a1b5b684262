"""Natural language to a checked program: prompt, extract, check, repair; and the vote over answers.

The planner only hands text to the parser and reads the checker's
diagnostics. A program that does not parse or check is sent back to the LLM
with the diagnostics (line, caret, message) for a fix, up to
``repair_rounds`` times; if it is still invalid, :class:`PlanningError` shows
every attempt. Nothing runs before a program checks. What it does is told as
events (:mod:`visprog.planner.events`) to an ``on_event`` listener.
Running the programs and voting over their answers is :mod:`visprog.solving`'s.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from visprog.errors import ProgramError, ServiceError, VisprogError
from visprog.language.checker import CheckedProgram, check
from visprog.language.format import format_program
from visprog.language.signatures import Registry
from visprog.language.values import Type, answer_key
from visprog.llm import LLMClient
from visprog.llm.images import DEFAULT_SIDE, check_see_image, check_side
from visprog.planner.cache import PlanCache
from visprog.planner.constraint import ProgramConstraint, choose_mode
from visprog.planner.events import CacheHit, PlanFailed, Planned, RepairRound, ReplyReceived, RequestSent
from visprog.planner.extract import read_reply
from visprog.planner.prompts import build_messages, repair_messages
from visprog.planner.retrieval import DEFAULT_EXAMPLES, check_examples
from visprog.planner.seeing import images_key, seen_images, with_images
from visprog.planner.tasks import Task, get_task, input_names
from visprog.running.events import Listener, emit
from visprog.running.plugins import default_registry

__all__ = [
    "MAX_FEEDBACK_CHARS",
    "MAX_REPLY_BYTES",
    "TRUNCATED",
    "Attempt",
    "Plan",
    "Planner",
    "PlanningError",
    "reply_size",
    "shortened",
    "vote",
]

#: What a repair round says of a constrained reply that reached the token limit before the program ended.
TRUNCATED = (
    "The reply reached the token limit before the program's result step: the program is incomplete. "
    "Write the whole program again, shorter, ending with FINAL_RESULT=Result(var=...)."
)


@dataclass(frozen=True)
class Attempt:
    """One reply of the LLM: what it said, the program found in it, and what was wrong."""

    reply: str
    program: str
    error: str | None = None


@dataclass(frozen=True)
class Plan:
    """A program that parses and checks, in canonical form, with the attempts (the replies as written) behind it."""

    task: str
    text: str
    program: str
    checked: CheckedProgram
    attempts: tuple[Attempt, ...] = ()
    cached: bool = False

    @property
    def canonical(self) -> str:
        """The program that runs, in canonical form (:func:`visprog.language.format.format_program`).

        The planner hands out canonical programs: this is ``program`` with a final newline."""
        return format_program(self.checked)


#: The largest reply the planner reads, in bytes (UTF-8): a longer one is an attempt that failed, not read.
MAX_REPLY_BYTES = 1_000_000
#: The most characters of a reply or of its problems that a repair round sends back, or an error shows.
MAX_FEEDBACK_CHARS = 20_000


def reply_size(reply: str) -> int:
    """The size of ``reply`` in bytes, as UTF-8."""
    return len(reply.encode("utf-8", "surrogatepass"))


def shortened(text: str, limit: int = MAX_FEEDBACK_CHARS) -> str:
    """``text``, or its first ``limit`` characters and how many more were left out."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}\n[... {len(text) - limit:,} more characters left out]"


#: The temperature of several samples when none is given: different programs, still sensible ones.
SAMPLE_TEMPERATURE = 0.7


def sampling_temperature(samples: int, temperature: float | None) -> float | None:
    """The temperature ``samples`` programs are drawn at: the one given, else :data:`SAMPLE_TEMPERATURE` for more
    than one (one sample keeps the model's default)."""
    return SAMPLE_TEMPERATURE if samples > 1 and temperature is None else temperature


class PlanningError(VisprogError):
    """No valid program after every repair round; the message shows each attempt."""

    def __init__(self, task: str, text: str, attempts: Sequence[Attempt], reason: str = "") -> None:
        self.task = task
        self.text = text
        self.attempts = tuple(attempts)
        lines = [f"no valid {task} program for {text!r} after {len(self.attempts)} attempt(s){reason}:"]
        for i, a in enumerate(self.attempts, start=1):
            lines.append(f"--- attempt {i} ---")
            shown = shortened(a.program)
            lines.append(shown if a.program.strip() else f"(no program found in the reply: {a.reply[:200]!r})")
            if a.error:
                lines.append("problems:")
                lines.append(shortened(a.error))
        super().__init__("\n".join(lines))


def vote(answers: Sequence[Any]) -> tuple[Any, float]:
    """The majority answer and the share of answers that agree with it (ties: the first seen).

    Answers are the same when :func:`visprog.language.values.answer_key` says so,
    the rule answer scoring uses too: ``'yes'`` and ``True``, ``'2'`` and ``2.0``.
    """
    if not answers:
        raise ValueError("no answers to vote on")
    keys = [answer_key(a) for a in answers]
    counts = Counter(keys)
    best = max(counts.values())
    winner = next(k for k in keys if counts[k] == best)
    return answers[keys.index(winner)], best / len(answers)


class Planner:
    """Plans programs with an LLM backend, checked against a registry, cached on disk.

    ``cache``: a :class:`PlanCache`, ``True`` for the default one, ``False``/``None`` for none.
    ``examples``: how many of the task's in-context examples a prompt shows, those most like the text
    (:mod:`visprog.planner.retrieval`; default :data:`~visprog.planner.retrieval.DEFAULT_EXAMPLES`, 0: none).
    ``see_image``: the model sees the input images (given to :meth:`plan`), downscaled so their longer side is at
    most ``see_image_side`` pixels (:mod:`visprog.planner.seeing`); it needs a multimodal chat model.
    ``constrain``: how generation is held to valid programs (:mod:`visprog.planner.constraint`): ``none``,
    ``grammar`` (the language's syntax) or ``types`` (syntax, assigned names and types, rebuilt per line).
    Default: the strongest the backend follows (``types`` for a local model, ``grammar`` for a server
    configured with a grammar format, else ``none``).
    """

    def __init__(
        self,
        backend: LLMClient,
        *,
        registry: Registry | None = None,
        repair_rounds: int = 2,
        cache: PlanCache | bool | None = True,
        examples: int | None = None,
        see_image: bool = False,
        see_image_side: int = DEFAULT_SIDE,
        constrain: str | None = None,
        max_reply_bytes: int = MAX_REPLY_BYTES,
    ) -> None:
        if repair_rounds < 0:
            raise ValueError(f"repair_rounds must be >= 0, got {repair_rounds}")
        if isinstance(max_reply_bytes, bool) or not isinstance(max_reply_bytes, int) or max_reply_bytes < 1:
            raise ValueError(f"max_reply_bytes must be a whole number >= 1, got {max_reply_bytes!r}")
        self.max_reply_bytes = max_reply_bytes
        self.backend = backend
        self.registry = registry or default_registry()
        self.repair_rounds = repair_rounds
        self.cache: PlanCache | None = PlanCache() if cache is True else (cache or None)
        self.examples = DEFAULT_EXAMPLES if examples is None else check_examples(examples)
        self.see_image = check_see_image(see_image)
        self.see_image_side = check_side(see_image_side)
        self.constrain = choose_mode(constrain, getattr(backend, "constraint_modes", ()), backend.identity)

    def plan(
        self,
        task: str | Task,
        text: str,
        *,
        sample: int = 0,
        temperature: float | None = None,
        feedback: str | None = None,
        images: Mapping[str, Any] | None = None,
        on_event: Listener | None = None,
    ) -> Plan:
        """A checked program for ``text`` (a question, statement or instruction).

        ``sample`` and ``temperature`` tell samples apart (each is cached on its
        own); ``feedback`` is an execution error of an earlier plan to fix.
        ``images`` maps the task's inputs to their images: the model sees them
        when ``see_image`` is on (and the cache key holds their digest), else they are not read.
        ``on_event`` receives :mod:`visprog.planner.events` as they happen.
        """
        spec = get_task(task)
        messages = build_messages(spec, self.registry, text, self.examples)  # the key hashes the examples shown
        seen = seen_images(spec, images, self.see_image_side) if self.see_image else []
        key = PlanCache.key(
            self.backend.identity,
            json.dumps(messages, sort_keys=True),
            str(sample),
            repr(temperature),
            feedback or "",
            *([images_key(seen)] if seen else []),  # without images: the keys plans were cached under before
            *([f"constrain={self.constrain}"] if self.constrain != "none" else []),
            *([generation] if (generation := getattr(self.backend, "generation", "")) else []),
        )
        if self.cache is not None:
            stored = self.cache.get(key)
            if stored is not None:
                try:
                    checked = check(stored, spec.inputs, registry=self.registry, known_inputs=input_names())
                except ProgramError:
                    pass  # the registry changed since: plan again
                else:
                    stored, checked = self._canonical(checked, spec)
                    emit(on_event, CacheHit(spec.name, sample, stored))
                    emit(on_event, Planned(spec.name, sample, stored, 0))
                    return Plan(spec.name, text, stored, checked, (), cached=True)
        if feedback:
            messages = [*messages[:-1], {"role": "user", "content": f"{messages[-1]['content']}\n\n{feedback}"}]
        if seen:  # repair rounds keep this turn, images included
            messages = with_images(messages, seen)
        attempts: list[Attempt] = []
        constraint = (
            None
            if self.constrain == "none"
            else ProgramConstraint(self.registry, dict.fromkeys(spec.inputs, Type.IMAGE), self.constrain)
        )
        for attempt in range(1, self.repair_rounds + 2):
            emit(on_event, RequestSent(spec.name, text, sample, attempt, len(messages)))
            started = time.perf_counter()
            if constraint is None:
                reply = self.backend.complete(messages, n=1, temperature=temperature)[0]
            else:
                reply = self.backend.complete(messages, n=1, temperature=temperature, constraint=constraint)[0]  # type: ignore[call-arg]
            too_large = self._too_large(reply)
            if too_large:
                reply, program = shortened(reply), ""
            else:
                reading = read_reply(
                    reply, lambda p: check(p, spec.inputs, registry=self.registry, known_inputs=input_names())
                )
                program = reading.program
            emit(on_event, ReplyReceived(spec.name, sample, attempt, reply, program, time.perf_counter() - started))
            try:
                if too_large:
                    raise _TooLarge(too_large)
                if not program.strip():
                    raise _NoProgram()
                checked = reading.result()
                if getattr(reply, "truncated", False):
                    raise _Truncated()
            except _TooLarge as e:
                diagnostics = str(e)
            except _NoProgram:
                diagnostics = "The reply contains no program. Answer with the program only, one step per line."
            except _Truncated:
                diagnostics = TRUNCATED
            except ProgramError as e:
                diagnostics = shortened(e.render())
                if getattr(reply, "truncated", False):
                    diagnostics = f"{TRUNCATED}\n{diagnostics}"
            else:
                attempts.append(Attempt(reply, program))
                program, checked = self._canonical(checked, spec)
                if self.cache is not None:
                    self.cache.put(key, program)
                emit(on_event, Planned(spec.name, sample, program, attempt))
                return Plan(spec.name, text, program, checked, tuple(attempts))
            attempts.append(Attempt(reply, program, diagnostics))
            if attempt <= self.repair_rounds:
                emit(on_event, RepairRound(spec.name, sample, attempt, diagnostics))
                messages = repair_messages(messages, shortened(reply), diagnostics)
        error = PlanningError(spec.name, text, attempts)
        emit(on_event, PlanFailed(spec.name, sample, len(attempts), str(error)))
        raise error

    def _too_large(self, reply: str) -> str:
        """What is wrong with a reply longer than ``max_reply_bytes``; empty when it is not."""
        if len(reply) * 4 <= self.max_reply_bytes:  # a character is at most 4 bytes
            return ""
        size = reply_size(reply)
        if size <= self.max_reply_bytes:
            return ""
        return (
            f"The reply is {size:,} bytes long; replies are limited to {self.max_reply_bytes:,} "
            "(Planner(max_reply_bytes=...)). Answer with the program only, one step per line."
        )

    def _canonical(self, checked: CheckedProgram, spec: Task) -> tuple[str, CheckedProgram]:
        """The program as it runs and is shown: in canonical form (:func:`~visprog.language.format.format_program`),
        checked again when that differs from what the model wrote (the same meaning, by construction)."""
        program = format_program(checked, self.registry).rstrip("\n")
        if program == checked.source.rstrip("\n"):
            return program, checked
        return program, check(program, spec.inputs, registry=self.registry, known_inputs=input_names())

    def plan_samples(
        self,
        task: str | Task,
        text: str,
        samples: int = 1,
        *,
        temperature: float | None = None,
        images: Mapping[str, Any] | None = None,
        on_event: Listener | None = None,
    ) -> list[Plan | PlanningError | ServiceError]:
        """``samples`` plans for ``text``, each a :class:`Plan` or the :class:`PlanningError` of that sample.

        With more than one sample and no ``temperature``, they are drawn at :data:`SAMPLE_TEMPERATURE`.
        ``images``: the task's input images, as :meth:`plan` takes them.
        An LLM service that refuses this request (a ``per_request``
        :class:`~visprog.errors.ServiceError`) ends the list with that error, as
        every other sample would get the same; any other service error is raised.
        """
        if samples < 1:
            raise ValueError(f"samples must be at least 1, got {samples}")
        temperature = sampling_temperature(samples, temperature)
        spec = get_task(task)
        plans: list[Plan | PlanningError | ServiceError] = []
        for k in range(samples):
            try:
                plans.append(self.plan(spec, text, sample=k, temperature=temperature, images=images, on_event=on_event))
            except PlanningError as e:
                plans.append(e)
            except ServiceError as e:
                if not e.per_request:
                    raise
                plans.append(e)
                break
        return plans


class _NoProgram(Exception):
    pass


class _TooLarge(Exception):
    """A reply over ``max_reply_bytes``: not read at all."""


class _Truncated(Exception):
    """A constrained reply that stopped at the token limit (it may check, but it is not what the model meant)."""
