"""The web app's requests: several at once, each within a time limit, their programs run on one batcher.

Up to ``max_concurrent`` requests are served at once (Gradio's queue holds
the others, and the page says they wait); a request that runs past its time
limit ends there, with what it had done so far. What they share lives in one
:class:`Requests`:

- the :class:`~visprog.running.batcher.Batcher` every program runs through,
  as the HTTP API's do (:mod:`visprog.apps.api_service`): the models are
  called from its one worker thread, never from two threads at once, and the
  ready steps of concurrent requests share batched calls. Planning happens on
  each request's own thread, outside it: a slow LLM reply holds up no other
  request;
- how many requests are being served now, for the status line of one that
  arrives.

A request's work runs on a worker thread that hands its events to the page as
they come, until the work ends or its time is up
(:class:`visprog.running.events.Stream` with ``seconds``).
:func:`plan_then_run` is a request's work: plan on the request's thread, run on
the batcher, vote. Nothing here imports Gradio.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from visprog.errors import VisprogError
from visprog.llm.deadline import deadline as llm_deadline
from visprog.running.events import Listener
from visprog.running.tracing import Trace

if TYPE_CHECKING:
    from visprog.language.signatures import Registry
    from visprog.language.values import Image
    from visprog.planner.core import Planner
    from visprog.planner.tasks import Task
    from visprog.running.batcher import Batcher
    from visprog.running.runtime import Runtime

__all__ = [
    "DEFAULT_MAX_CONCURRENT",
    "DEFAULT_REQUEST_TIMEOUT",
    "Requests",
    "batcher_for",
    "listening",
    "plan_then_run",
    "time_left",
]

#: Requests the web app serves at once (more wait in Gradio's queue).
DEFAULT_MAX_CONCURRENT = 4

#: Seconds one request of the web app may take, planning and running.
DEFAULT_REQUEST_TIMEOUT = 300.0


class Requests:
    """What the web app's requests share: the batcher their programs run on, and how many are served now.

    ``registry`` checks the programs written in the app; ``runtime`` holds the models (default: the
    process's). The batcher starts with the first program (its worker thread lives as long as the process).
    """

    def __init__(
        self,
        registry: Registry | None = None,
        runtime: Runtime | None = None,
        *,
        max_concurrent: int = DEFAULT_MAX_CONCURRENT,
        timeout: float | None = DEFAULT_REQUEST_TIMEOUT,
    ) -> None:
        if isinstance(max_concurrent, bool) or not isinstance(max_concurrent, int) or max_concurrent < 1:
            raise ValueError(f"max_concurrent must be a whole number of at least 1, got {max_concurrent!r}")
        if timeout is not None and not timeout > 0:
            raise ValueError(f"the request timeout must be a positive number of seconds, got {timeout!r}")
        self.registry = registry
        self.runtime = runtime
        self.max_concurrent = max_concurrent
        self.timeout = timeout
        self._lock = threading.Lock()
        self._batcher: Batcher | None = None
        self._serving = 0

    @property
    def batcher(self) -> Batcher:
        """The batcher every program of the app runs through (made on first use)."""
        with self._lock:
            if self._batcher is None:
                from visprog.planner.tasks import input_names
                from visprog.running.batcher import Batcher
                from visprog.running.interpreter import Interpreter

                interpreter = Interpreter(self.registry, self.runtime, known_inputs=input_names())
                self._batcher = Batcher(interpreter, window=0.0)
            return self._batcher

    @property
    def serving(self) -> int:
        """Requests being served now."""
        with self._lock:
            return self._serving

    @contextlib.contextmanager
    def serve(self) -> Iterator[None]:
        """Count a request as served while the block runs."""
        with self._lock:
            self._serving += 1
        try:
            yield
        finally:
            with self._lock:
                self._serving -= 1

    def waiting_line(self) -> str:
        """The status line of a request that has just been sent (to Gradio's queue): it starts in a moment, or
        it waits its turn."""
        busy = self.serving
        if busy < self.max_concurrent:
            return "Queued: it starts in a moment"
        limit = self.max_concurrent
        return (
            f"Queued: {busy} request{'s are' if busy != 1 else ' is'} being served, the most this server serves "
            f"at once ({limit}); yours starts when one of them ends"
        )


# --- one request's work ----------------------------------------------------------------------


@contextlib.contextmanager
def batcher_for(runner: Batcher | None, registry: Registry | None, runtime: Runtime | None) -> Iterator[Batcher]:
    """``runner``, or a batcher of the caller's own (on ``registry`` and ``runtime``), closed after the block
    (without waiting for a run that is no longer waited for)."""
    if runner is not None:
        yield runner
        return
    from visprog.planner.tasks import input_names
    from visprog.running.batcher import Batcher
    from visprog.running.interpreter import Interpreter

    own = Batcher(Interpreter(registry, runtime, known_inputs=input_names()), window=0.0)
    try:
        yield own
    finally:
        own.close(timeout=0)


def time_left(deadline: float | None) -> float | None:
    """Seconds left before ``deadline`` (``time.monotonic()``; None: no limit); a :class:`TimeoutError` when
    none are."""
    if deadline is None:
        return None
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("the request's time is up")
    return left


def listening(runner: Batcher, on_event: Listener | None) -> contextlib.AbstractContextManager[Any]:
    """While the block runs, the model events of ``runner``'s runtime reach ``on_event`` too."""
    return runner.interpreter.runtime.listening(on_event) if on_event is not None else contextlib.nullcontext()


def plan_then_run(
    runner: Batcher,
    task: Task,
    text: str,
    images: dict[str, Image],
    planner: Planner,
    samples: int,
    on_event: Listener | None,
    deadline: float | None = None,
) -> tuple[Trace, str]:
    """Plan ``samples`` programs on this thread, run the valid ones on ``runner`` and vote, as
    :func:`visprog.solving.solve` does: the trace and the program of the answer most runs share; else the last
    sample's error is raised. Past ``deadline`` no program starts and none is waited for (a :class:`TimeoutError`).
    """
    from visprog.planner.core import Plan
    from visprog.solving import vote_runs

    left = time_left(deadline)
    with llm_deadline(left) if left is not None else contextlib.nullcontext():  # the LLM's requests end by it too
        plans = planner.plan_samples(task, text, samples, images=images, on_event=on_event)
    valid = [p for p in plans if isinstance(p, Plan)]
    jobs = [(p.checked, images) for p in valid]
    runs = runner.run_many(jobs, on_event=on_event, timeout=time_left(deadline)) if valid else []
    good = [(p, t) for p, t in zip(valid, runs, strict=True) if isinstance(t, Trace)]
    if good:
        trace, _ = vote_runs([t for _, t in good], samples=len(plans), on_event=on_event)
        return trace, next(p for p, t in good if t is trace).program
    last = runs[-1] if isinstance(plans[-1], Plan) else plans[-1]
    if not isinstance(last, VisprogError):
        raise TypeError(f"a sample ended with neither a plan nor an error: {last!r}")
    raise last
