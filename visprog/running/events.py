"""Events: what is happening while a program is planned and run.

The interpreter and the planner report their progress as events, plain frozen
dataclasses. A caller gets them through a callback (``on_event=``) or as an
iterator (:func:`stream`). The web app, the CLI's progress and any server read
progress from these and nothing else.

Interpreter events: :class:`RunStarted`, :class:`StepStarted`,
:class:`StepFinished`, :class:`StepFailed`, :class:`StepSkipped`,
:class:`RunFinished`. For one program they come in this order: ``RunStarted``,
then for each step that runs ``StepStarted`` and either ``StepFinished`` or
``StepFailed``, then (after a failure) ``StepSkipped`` for each step not run
because it needs a failed step, then ``RunFinished``. A failing step does not
stop the steps that do not need it: their events come after its ``StepFailed``.
Steps handed to a module in one batched call all start before any of them
finishes. ``Interpreter.run_many`` numbers its programs
(``job``); their events interleave as their steps do. The planner's own
events share the :class:`Event` base.

Model events: :class:`ModelLoading`, :class:`ModelDownload` (bytes of the
model's files fetched so far, while a model downloads) and :class:`ModelLoaded`.
They come from the runtime (:meth:`Runtime.listening
<visprog.running.runtime.Runtime.listening>`), on the thread that loads the
model, inside the step that needs it; a listener of them that raises is
logged and skipped, never stopping the load.

A listener runs on the thread doing the work, between steps: keep it quick.
If it raises, the interpreter stops the run and raises
:class:`~visprog.errors.ListenerError` carrying the trace so far.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from typing import Any, ClassVar, Generic, TypeVar

from visprog.language.values import describe_value

__all__ = [
    "Event",
    "Listener",
    "ModelDownload",
    "ModelLoaded",
    "ModelLoading",
    "RunFinished",
    "RunStarted",
    "StepFailed",
    "StepFinished",
    "StepSkipped",
    "StepStarted",
    "Stream",
    "emit",
    "stream",
]

T = TypeVar("T")


@dataclass(frozen=True)
class Event:
    """Base of every event; ``kind`` names it in JSON and logs (``"step_finished"``)."""

    kind: ClassVar[str] = "event"

    def to_dict(self) -> dict[str, Any]:
        """The event as JSON-ready data: ``kind`` and its fields (values described, not embedded).

        A value that is not a string, number, boolean or ``None`` (an image, objects, a list) is
        given as its description: ``"Image 640x480"``, ``"Objects (2)"``.
        """
        out: dict[str, Any] = {"kind": self.kind}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = value if isinstance(value, (str, int, float, bool, type(None))) else describe_value(value)
        return out


#: Something that receives events. It runs on the thread that does the work: keep it quick.
Listener = Callable[[Event], None]


def emit(listener: Listener | None, event: Event) -> None:
    """Hand ``event`` to ``listener`` if there is one. A listener's exception propagates."""
    if listener is not None:
        listener(event)


@dataclass(frozen=True)
class RunStarted(Event):
    """A program starts: ``job`` numbers it within one ``run_many`` call (0 for ``run``)."""

    kind: ClassVar[str] = "run_started"
    job: int
    program: str
    steps: int


@dataclass(frozen=True)
class StepStarted(Event):
    """Step ``index`` (0-based, of ``total``) starts: ``TARGET=Module(...)`` on ``line``."""

    kind: ClassVar[str] = "step_started"
    job: int
    index: int
    total: int
    target: str
    module: str
    line: int


@dataclass(frozen=True)
class StepFinished(Event):
    """Step ``index`` finished with ``value`` after ``seconds``; ``batch`` steps shared its module call."""

    kind: ClassVar[str] = "step_finished"
    job: int
    index: int
    total: int
    target: str
    module: str
    line: int
    value: Any
    seconds: float
    batch: int = 1


@dataclass(frozen=True)
class StepFailed(Event):
    """Step ``index`` failed with ``error`` (the step's message) after ``seconds``."""

    kind: ClassVar[str] = "step_failed"
    job: int
    index: int
    total: int
    target: str
    module: str
    line: int
    error: str
    seconds: float


@dataclass(frozen=True)
class StepSkipped(Event):
    """Step ``index`` was not run: it needs the value of a step that failed (``reason`` says which lines)."""

    kind: ClassVar[str] = "step_skipped"
    job: int
    index: int
    total: int
    target: str
    module: str
    line: int
    reason: str


@dataclass(frozen=True)
class RunFinished(Event):
    """A program ended: ``ok`` with its result, or not with the error's message."""

    kind: ClassVar[str] = "run_finished"
    job: int
    ok: bool
    seconds: float
    result: Any = None
    error: str | None = None


@dataclass(frozen=True)
class ModelLoading(Event):
    """``module`` starts loading ``model_id`` (a hub id or a folder) onto ``device``."""

    kind: ClassVar[str] = "model_loading"
    module: str
    model_id: str
    device: str


@dataclass(frozen=True)
class ModelDownload(Event):
    """``done`` bytes of ``model_id``'s files downloaded so far, of ``total`` (None: not known yet).

    Sent at most about four times a second while the files download, and once when they are all in.
    """

    kind: ClassVar[str] = "model_download"
    module: str
    model_id: str
    done: int
    total: int | None


@dataclass(frozen=True)
class ModelLoaded(Event):
    """``module`` loaded ``model_id`` in ``seconds`` (download included)."""

    kind: ClassVar[str] = "model_loaded"
    module: str
    model_id: str
    seconds: float


class Stream(Generic[T]):
    """Events of ``work`` as an iterator; after it is exhausted, ``result`` holds what ``work`` returned.

    ``work`` receives the listener to pass on (``on_event=``) and runs on a
    worker thread; iterating yields its events as they happen. An exception
    raised by ``work`` is raised again by the iteration, after the events that
    came before it.

    With ``seconds``, iterating stops once that many seconds have passed since the stream was made, and
    ``timed_out`` says so; the worker is then left to end on its own, unheard (``work`` should bound itself
    too: see :attr:`deadline`).
    """

    _DONE = object()

    def __init__(self, work: Callable[[Listener], T], seconds: float | None = None) -> None:
        if seconds is not None and not seconds > 0:
            raise ValueError(f"the time limit must be a positive number of seconds, got {seconds!r}")
        self.seconds = seconds
        #: when the time is up (``time.monotonic()``), or None
        self.deadline = None if seconds is None else time.monotonic() + seconds
        self.timed_out = False
        self._work = work
        self._queue: queue.Queue[Any] = queue.Queue()
        self._result: T | None = None
        self._error: BaseException | None = None
        self._finished = False
        self._thread: threading.Thread | None = None

    @property
    def result(self) -> T:
        if not self._finished:
            raise RuntimeError("the work has not finished: iterate over the stream first")
        if self._error is not None:
            raise self._error
        return self._result  # type: ignore[return-value]

    def _run(self) -> None:
        try:
            self._result = self._work(self._queue.put)
        except BaseException as e:  # handed to the iterating thread
            self._error = e
        finally:
            self._queue.put(self._DONE)

    def __iter__(self) -> Iterator[Event]:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="visprog-events", daemon=True)
            self._thread.start()
        while True:
            left = None if self.deadline is None else max(self.deadline - time.monotonic(), 0.0)
            try:
                item = self._queue.get(timeout=left)
            except queue.Empty:
                self.timed_out = True
                return
            if item is self._DONE:
                break
            yield item
        self._thread.join()
        self._finished = True
        if self._error is not None:
            raise self._error


def stream(work: Callable[[Listener], T], seconds: float | None = None) -> Stream[T]:
    """Iterate over the events of ``work(on_event)``; ``.result`` is its return value afterwards.

    >>> s = stream(lambda on_event: interpreter.run(program, images, on_event=on_event))  # doctest: +SKIP
    >>> for event in s: print(event.kind)                                                  # doctest: +SKIP
    >>> trace = s.result                                                                   # doctest: +SKIP
    """
    return Stream(work, seconds)
