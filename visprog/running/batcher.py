"""Programs of many callers run together: their ready steps share batched module calls.

A server gets requests on many threads. Run one by one, each request's ``Vqa`` step is a model call of
its own; a :class:`Batcher` hands every program it is given to one worker thread that runs them all
through :meth:`Interpreter.run_jobs <visprog.running.interpreter.Interpreter.run_jobs>`, the engine of
:meth:`~visprog.running.interpreter.Interpreter.run_many`: ready steps of one batch-capable module, across
every program in flight, go into one call (at most the interpreter's ``max_batch`` argument sets).

How programs are gathered:

- When nothing runs, the first program to arrive waits ``window`` seconds (a few ms) for others, then
  they start together (sooner when ``max_batch`` of them are waiting).
- While programs run, one that arrives joins at the next round of ready steps: it never waits for the
  others to finish, and its first steps share calls with theirs when they use the same module.

Each submission gets its own :class:`~visprog.running.tracing.Trace`, or its own
:class:`~visprog.errors.StepError` (with its partial trace) when one of its steps fails; a failing program
fails alone. Its events (``on_event``) come on the worker thread, numbered as the caller asked; a listener
that raises is logged and hears no more of that run, which goes on. Checking happens on the caller's
thread: :meth:`Batcher.submit` raises a program's :class:`~visprog.errors.ProgramError` at once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from visprog.errors import VisprogError
from visprog.language import syntax
from visprog.language.checker import CheckedProgram
from visprog.running.events import Event, Listener
from visprog.running.interpreter import Interpreter
from visprog.running.scheduling import Job
from visprog.running.tracing import Trace

__all__ = ["DEFAULT_WINDOW", "Batcher", "BatcherClosed"]

log = logging.getLogger(__name__)

#: Seconds the first program to arrive at an idle batcher waits for others.
DEFAULT_WINDOW = 0.005

Program = CheckedProgram | str | syntax.Program


class BatcherClosed(VisprogError):
    """The batcher was closed: it takes no more programs."""


class Batcher:
    """Runs the programs of many threads together on one ``interpreter`` (see the module's docstring).

    ``window``: seconds an idle batcher waits after a first program for more (0: start at once). Use it
    as a context manager, or call :meth:`close`, to stop its worker thread.
    """

    def __init__(self, interpreter: Interpreter | None = None, *, window: float = DEFAULT_WINDOW) -> None:
        if window < 0:
            raise ValueError(f"window must be 0 or more seconds, got {window}")
        self.interpreter = interpreter or Interpreter()
        self.window = window
        self._cond = threading.Condition()
        self._pending: list[tuple[Job, Future[Trace]]] = []
        self._running: dict[int, Future[Trace]] = {}
        self._closed = False
        self._thread = threading.Thread(target=self._work, name="visprog-batcher", daemon=True)
        self._thread.start()

    # -- what callers use ---------------------------------------------------------------------

    def submit(
        self, program: Program, inputs: Mapping[str, Any], *, on_event: Listener | None = None, number: int = 0
    ) -> Future[Trace]:
        """Start ``program`` on ``inputs``; the future's result is its trace, or the run's
        :class:`~visprog.errors.StepError`. Raises the program's :class:`~visprog.errors.ProgramError` (or a
        :class:`~visprog.errors.VisprogError` for a missing input) here, on the caller's thread. Cancelling the
        future before the program starts drops it. ``number`` is the ``job`` of its events."""
        listener = None if on_event is None else _Guarded(on_event)
        return self._enqueue([self.interpreter.prepare(program, inputs, number=number, on_event=listener)])[0]

    def run(
        self,
        program: Program,
        inputs: Mapping[str, Any],
        *,
        on_event: Listener | None = None,
        timeout: float | None = None,
    ) -> Trace:
        """:meth:`submit`, then wait: the trace, or the run's :class:`~visprog.errors.StepError` raised.

        ``timeout``: seconds to wait; past it a :class:`TimeoutError` (a program that has not started yet is
        dropped; one that has goes on to its end, unheard)."""
        future = self.submit(program, inputs, on_event=on_event)
        return _wait(future, timeout)

    def run_many(
        self,
        jobs: Sequence[tuple[Program, Mapping[str, Any]]],
        *,
        on_event: Listener | None = None,
        timeout: float | None = None,
    ) -> list[Trace | VisprogError]:
        """Like :meth:`Interpreter.run_many <visprog.running.interpreter.Interpreter.run_many>`, but together
        with every other caller's programs: results in job order, each a trace or that job's error (a program
        that does not check: its :class:`~visprog.errors.ProgramError`). Events are numbered by job order."""
        results: list[Trace | VisprogError | None] = [None] * len(jobs)
        listener = None if on_event is None else _Guarded(on_event)
        prepared: list[tuple[int, Job]] = []
        for k, (program, inputs) in enumerate(jobs):
            try:
                prepared.append((k, self.interpreter.prepare(program, inputs, number=k, on_event=listener)))
            except VisprogError as e:
                results[k] = e
        futures = self._enqueue([job for _, job in prepared])
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            for (k, _), future in zip(prepared, futures, strict=True):
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                try:
                    results[k] = _wait(future, left)
                except VisprogError as e:
                    results[k] = e
        except TimeoutError:
            for future in futures:
                future.cancel()
            raise
        return [r for r in results if r is not None]

    @property
    def load(self) -> tuple[int, int]:
        """(programs running, programs waiting to start) now."""
        with self._cond:
            return len(self._running), len(self._pending)

    @property
    def alive(self) -> bool:
        """Whether the worker thread runs (and the batcher is open)."""
        return self._thread.is_alive() and not self._closed

    def close(self, timeout: float | None = None) -> None:
        """Take no more programs; the ones given run to their end (within ``timeout`` seconds) first."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def __enter__(self) -> Batcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the worker ---------------------------------------------------------------------------

    def _enqueue(self, jobs: list[Job]) -> list[Future[Trace]]:
        """Hand ``jobs`` to the worker, all at once (they start in the same round)."""
        futures: list[Future[Trace]] = [Future() for _ in jobs]
        with self._cond:
            if self._closed:
                raise BatcherClosed("the batcher is closed: it takes no more programs")
            self._pending.extend(zip(jobs, futures, strict=True))
            self._cond.notify_all()
        return futures

    def _take(self, idle: bool) -> list[Job] | None:
        """The programs that arrived (``run_jobs``'s ``take``); None once closed with none left."""
        with self._cond:
            if idle:
                while not self._pending and not self._closed:
                    self._cond.wait()
                gather = self.interpreter.max_batch or 0
                deadline = time.monotonic() + self.window
                while self._pending and not self._closed and (not gather or len(self._pending) < gather):
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
            if self._closed and not self._pending:
                return None
            taken, self._pending = self._pending, []
            jobs = []
            for job, future in taken:
                if future.set_running_or_notify_cancel():  # False: cancelled while it waited
                    self._running[id(job)] = future
                    jobs.append(job)
            return jobs

    def _ended(self, job: Job) -> None:
        with self._cond:
            future = self._running.pop(id(job))
        if job.error is not None:
            future.set_exception(job.error)
        else:
            future.set_result(job.trace)

    def _work(self) -> None:
        while True:
            try:
                self.interpreter.run_jobs(self._take, self._ended)
                return  # closed, and every program has ended
            except Exception as e:  # a bug, not a step's failure: the programs in flight fail, the next ones run
                log.exception("the batcher's run stopped")
                with self._cond:
                    running, self._running = self._running, {}
                for future in running.values():
                    future.set_exception(VisprogError(f"the run stopped: {type(e).__name__}: {e}"))


class _Guarded:
    """A caller's listener that may raise: logged once, then it hears no more; the run goes on."""

    def __init__(self, listener: Listener) -> None:
        self.listener: Listener | None = listener

    def __call__(self, event: Event) -> None:
        if self.listener is None:
            return
        try:
            self.listener(event)
        except Exception:
            log.warning(
                "an on_event listener raised on the %s event; it hears no more of this run", event.kind, exc_info=True
            )
            self.listener = None


def _wait(future: Future[Trace], timeout: float | None) -> Trace:
    try:
        return future.result(timeout)
    except FutureTimeout:
        future.cancel()
        raise TimeoutError(f"the run did not end within {timeout:g} s") from None
