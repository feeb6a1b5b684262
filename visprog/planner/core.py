"""Natural language to a checked program: prompt, extract, check, repair; sample and vote.

The planner only hands text to the parser and reads the checker's
diagnostics. A program that does not parse or check is sent back to the LLM
with the diagnostics (line, caret, message) for a fix, up to
``repair_rounds`` times; if it is still invalid, :class:`PlanningError` shows
every attempt. Nothing runs before a program checks.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from visprog.errors import ProgramError, StepError, VisprogError
from visprog.language.checker import CheckedProgram, check
from visprog.language.signatures import Registry
from visprog.language.values import Image
from visprog.llm.clients import LLMBackend
from visprog.planner.cache import PlanCache
from visprog.planner.extract import extract_program
from visprog.planner.prompts import PromptSet, build_messages, load_prompts, repair_messages
from visprog.running.plugins import default_registry
from visprog.running.trace import Trace

__all__ = ["Attempt", "Plan", "Planner", "PlanningError", "Solution", "vote"]


@dataclass(frozen=True)
class Attempt:
    """One reply of the LLM: what it said, the program found in it, and what was wrong."""

    reply: str
    program: str
    error: str | None = None


@dataclass(frozen=True)
class Plan:
    """A program that parses and checks, with the attempts that led to it."""

    task: str
    text: str
    program: str
    checked: CheckedProgram
    attempts: tuple[Attempt, ...] = ()
    cached: bool = False


class PlanningError(VisprogError):
    """No valid program after every repair round; the message shows each attempt."""

    def __init__(self, task: str, text: str, attempts: Sequence[Attempt], reason: str = "") -> None:
        self.task = task
        self.text = text
        self.attempts = tuple(attempts)
        lines = [f"no valid {task} program for {text!r} after {len(self.attempts)} attempt(s){reason}:"]
        for i, a in enumerate(self.attempts, start=1):
            lines.append(f"--- attempt {i} ---")
            lines.append(a.program if a.program.strip() else f"(no program found in the reply: {a.reply[:200]!r})")
            if a.error:
                lines.append("problems:")
                lines.append(a.error)
        super().__init__("\n".join(lines))


@dataclass
class Solution:
    """The answer to a question (or the edited image) with how it was reached.

    ``agreement`` is the share of valid samples that gave the winning answer
    (1.0 for a single sample).
    """

    task: str
    text: str
    result: Any
    plan: Plan
    trace: Trace
    agreement: float = 1.0
    samples: list[tuple[Plan | PlanningError, Trace | VisprogError | None]] = field(default_factory=list)

    @property
    def program(self) -> str:
        return self.plan.program


def _answer_key(value: Any) -> Any:
    """A hashable, normalised form of an answer for voting."""
    if isinstance(value, str):
        return value.strip().strip(".").lower()
    if isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, list):
        return tuple(_answer_key(v) for v in value)
    return id(value)


def vote(answers: Sequence[Any]) -> tuple[Any, float]:
    """The majority answer and the share of answers that agree with it (ties: the first seen)."""
    if not answers:
        raise ValueError("no answers to vote on")
    keys = [_answer_key(a) for a in answers]
    counts = Counter(keys)
    best = max(counts.values())
    winner = next(k for k in keys if counts[k] == best)
    return answers[keys.index(winner)], best / len(answers)


class Planner:
    """Plans programs with an LLM backend, checked against a registry, cached on disk.

    ``cache``: a :class:`PlanCache`, ``True`` for the default one, ``False``/``None`` for none.
    """

    def __init__(
        self,
        backend: LLMBackend,
        *,
        registry: Registry | None = None,
        repair_rounds: int = 2,
        cache: PlanCache | bool | None = True,
    ) -> None:
        if repair_rounds < 0:
            raise ValueError(f"repair_rounds must be >= 0, got {repair_rounds}")
        self.backend = backend
        self.registry = registry or default_registry()
        self.repair_rounds = repair_rounds
        self.cache: PlanCache | None = PlanCache() if cache is True else (cache or None)

    # -- planning ---------------------------------------------------------

    def plan(
        self,
        task: str | PromptSet,
        text: str,
        *,
        sample: int = 0,
        temperature: float | None = None,
        feedback: str | None = None,
    ) -> Plan:
        """A checked program for ``text`` (a question, statement or instruction).

        ``sample`` and ``temperature`` tell samples apart (each is cached on its
        own); ``feedback`` is an execution error of an earlier plan to fix.
        """
        prompts = task if isinstance(task, PromptSet) else load_prompts(task)
        messages = build_messages(prompts, self.registry, text)
        key = PlanCache.key(
            self.backend.identity, json.dumps(messages, sort_keys=True), str(sample), repr(temperature), feedback or ""
        )
        if self.cache is not None:
            stored = self.cache.get(key)
            if stored is not None:
                try:
                    checked = check(stored, self.registry, prompts.inputs)
                except ProgramError:
                    pass  # the registry changed since: plan again
                else:
                    return Plan(prompts.task, text, stored, checked, (), cached=True)
        if feedback:
            messages = [*messages[:-1], {"role": "user", "content": f"{messages[-1]['content']}\n\n{feedback}"}]
        attempts: list[Attempt] = []
        for _ in range(self.repair_rounds + 1):
            reply = self.backend.complete(messages, n=1, temperature=temperature)[0]
            program = extract_program(reply)
            try:
                if not program.strip():
                    raise _NoProgram()
                checked = check(program, self.registry, prompts.inputs)
            except _NoProgram:
                diagnostics = "The reply contains no program. Answer with the program only, one step per line."
                attempts.append(Attempt(reply, program, diagnostics))
                messages = repair_messages(messages, reply, diagnostics)
                continue
            except ProgramError as e:
                attempts.append(Attempt(reply, program, e.render()))
                messages = repair_messages(messages, reply, e.render())
                continue
            attempts.append(Attempt(reply, program))
            if self.cache is not None:
                self.cache.put(key, program)
            return Plan(prompts.task, text, program, checked, tuple(attempts))
        raise PlanningError(prompts.task, text, attempts)

    # -- planning and running -----------------------------------------------

    def solve(
        self,
        task: str,
        text: str,
        images: Mapping[str, Image],
        run: Callable[[CheckedProgram, Mapping[str, Image]], Trace],
        *,
        samples: int = 1,
        temperature: float | None = None,
        feed_errors: bool = False,
        progress: Callable[[int, int], None] | None = None,
    ) -> Solution:
        """Plan and run; with ``samples`` > 1, run every valid sample and vote on the answers.

        With ``feed_errors``, a program that fails while running is sent back
        with the step's error for a new plan (once per sample).
        """
        if samples < 1:
            raise ValueError(f"samples must be at least 1, got {samples}")
        if samples > 1 and temperature is None:
            temperature = 0.7
        outcomes: list[tuple[Plan | PlanningError, Trace | VisprogError | None]] = []
        for i in range(samples):
            outcomes.append(self._plan_and_run(task, text, images, run, i, temperature, feed_errors))
            if progress is not None:
                progress(i + 1, samples)
        good = [(p, t) for p, t in outcomes if isinstance(p, Plan) and isinstance(t, Trace)]
        if not good:
            last_plan, last_run = outcomes[-1]
            if isinstance(last_plan, PlanningError):
                raise last_plan
            assert isinstance(last_run, VisprogError)
            raise last_run
        winner, agreement = vote([t.result for _, t in good])
        plan, trace = next((p, t) for p, t in good if t.result is winner)
        return Solution(task, text, winner, plan, trace, agreement, outcomes)

    def _plan_and_run(
        self,
        task: str,
        text: str,
        images: Mapping[str, Image],
        run: Callable[[CheckedProgram, Mapping[str, Image]], Trace],
        sample: int,
        temperature: float | None,
        feed_errors: bool,
    ) -> tuple[Plan | PlanningError, Trace | VisprogError | None]:
        try:
            plan = self.plan(task, text, sample=sample, temperature=temperature)
        except PlanningError as e:
            return e, None
        try:
            return plan, run(plan.checked, images)
        except StepError as e:
            if not feed_errors:
                return plan, e
            feedback = (
                f"An earlier program failed while running:\n{plan.program}\n"
                f"line {e.line}, {e.module}: {e.reason}\nWrite a program that avoids this."
            )
            try:
                plan = self.plan(task, text, sample=sample, temperature=temperature, feedback=feedback)
                return plan, run(plan.checked, images)
            except (PlanningError, StepError) as again:
                return plan, again


class _NoProgram(Exception):
    pass
