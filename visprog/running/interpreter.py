"""Run checked programs on registered modules.

Steps run in dependency order. Steps that become ready together and use the
same module are handed to that module in one call when it declares a batch
implementation. Every run returns a :class:`~visprog.running.tracing.Trace`.
A failing step does not stop the steps that do not need its value: they run,
the steps that need it do not (the trace lists them in ``skipped``), and then
the run raises the first failing step's :class:`~visprog.errors.StepError`,
which carries the trace with every step that ran, before the failure and after.
An exception a module raises names where in the module's code it was raised.
:meth:`Interpreter.run_many` runs many programs through the same engine and
batches ready steps of one module across all of them; :meth:`Interpreter.run_jobs` does
the same for programs that arrive while others run (a server's requests:
:mod:`visprog.running.batcher`).

Progress is reported as events (:mod:`visprog.running.events`) to an
``on_event`` listener, as the run goes: for each program :class:`RunStarted`,
then per step :class:`StepStarted` and :class:`StepFinished` (its value and
time) or :class:`StepFailed` (its error), after a failure :class:`StepSkipped`
for each step that needs a failed one, then :class:`RunFinished`. Steps of a
batched call each get their own events. A listener that raises stops the run:
it raises :class:`~visprog.errors.ListenerError`, which carries the trace so far.

Objects found on one image and used with a crop of it, or the other way round,
are mapped into the frame of the image the step works on (see
:mod:`visprog.language.frames`); the step's trace record says so in its notes.
"""

from __future__ import annotations

import os
import time
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from visprog.errors import ListenerError, StepError, VisprogError
from visprog.language import syntax
from visprog.language.checker import CheckedProgram, CheckedStep, check
from visprog.language.signatures import ModuleSpec, Registry
from visprog.language.values import Type, coerce, type_of_value
from visprog.running.events import Listener, RunFinished, RunStarted
from visprog.running.framing import map_objects, uncrop
from visprog.running.plan import INPUT, LITERAL, TEMPLATE, VALUE, lookup, resolve
from visprog.running.plugins import default_registry
from visprog.running.runtime import Context, RunCache, Runtime, default_runtime
from visprog.running.scheduling import Job, Stopped
from visprog.running.tracing import StepRecord, Trace

__all__ = ["Interpreter"]

#: :meth:`Interpreter.run_jobs`'s ``take``, ``ended`` and ``renew_cache``
_Feed = tuple[Callable[[bool], Sequence[Job] | None], Callable[[Job], None], int]


class _Failure(Exception):
    """A step failed; ``message`` is what the user reads."""

    def __init__(self, message: str, cause: BaseException | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.cause = cause


class Interpreter:
    """Runs programs against a registry with one shared runtime (device, model pool).

    ``max_batch`` caps how many steps go into one batched module call
    (``None``: no cap; ``1``: never batch). ``known_inputs`` are the input
    names programs may read (the tasks' inputs): a program text that reads one
    the caller did not pass is refused with the name of that input.
    """

    def __init__(
        self,
        registry: Registry | None = None,
        runtime: Runtime | None = None,
        *,
        max_batch: int | None = None,
        known_inputs: Iterable[str] = (),
    ) -> None:
        self.registry = registry or default_registry()
        self.known_inputs = tuple(known_inputs)
        self.runtime = runtime or default_runtime()
        if max_batch is not None and max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self.max_batch = max_batch

    def run(
        self,
        program: CheckedProgram | str | syntax.Program,
        inputs: Mapping[str, Any],
        *,
        cache: RunCache | None = None,
        on_event: Listener | None = None,
    ) -> Trace:
        """Run ``program`` on ``inputs`` (``{"IMAGE": <PIL image>}``) and return its trace.

        ``on_event`` receives the run's events as they happen (on this thread); if it raises, the run
        stops with a :class:`~visprog.errors.ListenerError` that carries the trace so far.
        """
        job = self._job(program, inputs, 0, on_event)
        try:
            self._execute([job], Context(self.runtime, cache or RunCache()))
        except Stopped as stop:
            raise _listener_error(stop, [job.error or job.trace]) from stop.cause
        if job.error is not None:
            raise job.error
        return job.trace

    def run_many(
        self,
        jobs: Sequence[tuple[CheckedProgram | str | syntax.Program, Mapping[str, Any]]],
        *,
        cache: RunCache | None = None,
        on_event: Listener | None = None,
    ) -> list[Trace | VisprogError]:
        """Run many programs at once; results in job order.

        Ready steps of the same batch-capable module across all jobs share batched calls of at most
        ``max_batch`` argument sets. A job that fails to check gets its
        :class:`~visprog.errors.ProgramError`, a job whose step fails gets its
        :class:`~visprog.errors.StepError` (with its partial trace); the other jobs go on. One
        :class:`~visprog.running.runtime.RunCache` serves every job of the call.

        ``on_event`` receives every job's events, each marked with the job's place in ``jobs``
        (``event.job``); a job that fails to check has none. If it raises, every job stops and a
        :class:`~visprog.errors.ListenerError` carries what each got as far as (``results``).
        """
        results: list[Trace | VisprogError | None] = [None] * len(jobs)
        running: list[tuple[int, Job]] = []
        for k, (program, inputs) in enumerate(jobs):
            try:
                running.append((k, self._job(program, inputs, k, on_event)))
            except VisprogError as e:
                results[k] = e
        stopped: Stopped | None = None
        try:
            self._execute([job for _, job in running], Context(self.runtime, cache or RunCache()))
        except Stopped as stop:
            stopped = stop
        for k, job in running:
            results[k] = job.error if job.error is not None else job.trace
        if stopped is not None:
            raise _listener_error(stopped, [r for r in results if r is not None]) from stopped.cause
        out: list[Trace | VisprogError] = []
        for r in results:
            assert r is not None
            out.append(r)
        return out

    def prepare(
        self,
        program: CheckedProgram | str | syntax.Program,
        inputs: Mapping[str, Any],
        *,
        number: int = 0,
        on_event: Listener | None = None,
    ) -> Job:
        """The :class:`~visprog.running.scheduling.Job` of ``program`` on ``inputs``, for :meth:`run_jobs`.

        Raises the program's :class:`~visprog.errors.ProgramError`, or a :class:`~visprog.errors.VisprogError`
        naming an input the program reads that ``inputs`` lacks. ``number`` is the job's number in its events.
        """
        return self._job(program, inputs, number, on_event)

    def run_jobs(
        self, take: Callable[[bool], Sequence[Job] | None], ended: Callable[[Job], None], *, renew_cache: int = 64
    ) -> None:
        """Run jobs (:meth:`prepare`) as they arrive, batching ready steps across all running ones as
        :meth:`run_many` does. Before each round of ready steps, ``take(idle)`` hands over the jobs that arrived
        (``idle``: none runs, ``take`` may wait); ``None``: no more, the running ones finish and this returns.
        ``ended(job)`` is called as each job ends (its ``trace`` counts from when it was taken). The jobs share a
        :class:`~visprog.running.runtime.RunCache`, a new one whenever none runs and after every ``renew_cache``
        jobs. A listener that raises stops every job, as in :meth:`run_many`: hand in listeners that do not.
        """
        try:
            self._execute([], Context(self.runtime, RunCache()), (take, ended, renew_cache))
        except Stopped as stop:
            raise _listener_error(stop, [stop.job.error or stop.job.trace]) from stop.cause

    def _job(
        self,
        program: CheckedProgram | str | syntax.Program,
        inputs: Mapping[str, Any],
        number: int,
        listener: Listener | None,
    ) -> Job:
        checked = (
            program
            if isinstance(program, CheckedProgram)
            else check(
                program,
                {k: type_of_value(v) for k, v in inputs.items()},
                registry=self.registry,
                known_inputs=self.known_inputs,
            )
        )
        missing = [name for name in checked.used_inputs if name not in inputs]
        if missing:
            raise VisprogError(
                f"the program uses input(s) {', '.join(missing)} but only {', '.join(inputs) or 'none'} were given"
            )
        trace = Trace(
            checked.source,
            {k: inputs[k] for k in checked.used_inputs},
            warnings=[f"line {w.line}, col {w.column}: {w.message}" for w in checked.warnings],
        )
        return Job(checked, trace, number, listener)

    def _execute(self, jobs: list[Job], ctx: Context, feed: _Feed | None = None) -> None:
        """Run every job (and with ``feed``, every job it hands over) to its end (failing steps are recorded
        on the job, never raised).

        A listener that raises stops every job: their traces end there, and :class:`Stopped` is raised.
        """
        start = time.perf_counter()
        started = {id(job): start for job in jobs}
        active = list(jobs)
        try:
            for job in jobs:
                if job.listener is not None:
                    job.emit(RunStarted(job.number, job.checked.source, len(job.checked.steps)))
            self._loop(active, ctx, started, feed)
        except Stopped as stop:
            message = stop.message()
            for job in active:  # a job that had not ended ends here
                if job.trace.error is None and (job.pending or job.error is not None):
                    job.trace.seconds = time.perf_counter() - started[id(job)]
                    job.trace.error = message if job.error is None else str(job.error)
            raise

    def _loop(self, active: list[Job], ctx: Context, started: dict[int, float], feed: _Feed | None) -> None:
        """Run ready steps until every job in ``active`` (and every job ``feed`` hands over) has ended."""
        taken = 0  # jobs taken since the run cache was made
        ended = feed[1] if feed is not None else None  # told of every job's end, after the feed ran dry too
        while True:
            if feed is not None:
                new = feed[0](not active)
                if new is None:
                    feed = None
                elif new:
                    if not active or taken >= feed[2]:
                        ctx, taken = Context(self.runtime, RunCache()), 0
                    taken += len(new)
                    now = time.perf_counter()
                    for job in new:
                        started[id(job)] = now
                        active.append(job)
                        if job.listener is not None:
                            job.emit(RunStarted(job.number, job.checked.source, len(job.checked.steps)))
            if not active:
                if feed is None:
                    return
                continue
            ready: list[tuple[Job, int]] = []
            for job in active:
                if job.ready:
                    job.ready.sort()
                    ready.extend((job, i) for i in job.ready)
                    job.ready = []
            if len(ready) == 1:  # the common case of one program: no grouping to do
                job, i = ready[0]
                self._run_one(job, i, ctx)
                if i in job.values:
                    job.done(i)
            else:
                for group in self._groups(ready):
                    self._run_group(group, ctx)
                    for job, i in group:
                        if i in job.values:
                            job.done(i)
            still = []
            for job in active:
                if job.ready:
                    still.append(job)
                    continue
                # No step is ready: the job has ended.
                job.trace.seconds = time.perf_counter() - started.pop(id(job))
                if job.error is not None:  # the steps that need a failed one never became ready
                    job.trace.error = str(job.error)
                    job.trace.skipped = job.skipped()
                elif not job.pending:
                    job.trace.result = job.values[job.checked.result]
                    job.trace.result_var = job.plan.result_var
                else:  # cannot happen for a checked (acyclic) program
                    raise AssertionError(f"no step of the program can run, {job.pending} left")
                if job.listener is not None:
                    t = job.trace
                    for k in t.skipped:
                        job.step_skipped(k)
                    job.emit(RunFinished(job.number, t.error is None, t.seconds, t.result, t.error))
                if ended is not None:
                    ended(job)
            active[:] = still

    def _groups(self, ready: list[tuple[Job, int]]) -> list[list[tuple[Job, int]]]:
        """Ready steps in job and line order; steps of one batch-capable module share a group across jobs."""
        if len(ready) == 1:
            return [ready]
        groups: dict[Any, list[tuple[Job, int]]] = {}
        order = {id(job): n for n, job in enumerate(dict.fromkeys(job for job, _ in ready))}
        for job, i in ready:
            spec = job.checked.steps[i].spec
            key = spec.name if spec is not None and spec.batch is not None else ("single", id(job), i)
            groups.setdefault(key, []).append((job, i))
        out: list[list[tuple[Job, int]]] = []
        cap = self.max_batch or len(ready) or 1
        for group in groups.values():
            out.extend(group[k : k + cap] for k in range(0, len(group), cap))
        return sorted(out, key=lambda g: (order[id(g[0][0])], g[0][1]))

    def _run_one(self, job: Job, i: int, ctx: Context) -> None:
        """Run one step on its own: :meth:`_run_group` for a single member, without the lists."""
        s = job.checked.steps[i]
        listener = job.listener
        if listener is not None:
            job.step_started(s)
        r = StepRecord(i, s.step.line, s.step.target, s.module, s.step.source)
        job.trace.records.append(r)  # in the order the steps ran (or failed)
        t0 = 0.0  # set when the module is called
        try:
            r.inputs = arguments = self._arguments(job, i)  # the module gets its own keyword dict
            if job.plan.remaps[i] is not None:
                _map_objects(job, i, arguments, r)
            spec = s.spec
            t0 = time.perf_counter()
            output = arguments["value"] if spec is None else self._call(spec, arguments, ctx)
            r.seconds = time.perf_counter() - t0
            if job.plan.crops[i]:
                output = _uncrop(job, i, r, output)
            r.output = output if type(output) is job.plan.returns[i] else self._check_output(s, output)
        except _Failure as f:
            self._fail(job, r, f)
            if listener is not None:
                job.step_ended(r, time.perf_counter() - t0 if t0 else 0.0)
            return
        job.values[i] = r.output
        if listener is not None:
            job.step_ended(r, r.seconds)

    def _run_group(self, members: list[tuple[Job, int]], ctx: Context) -> None:
        """Run one module call for ``members``; each failure is recorded on its own step and job.

        A step whose arguments cannot be worked out fails alone; the others go on to the call. Records
        join their traces as their steps end (failed at once, or after the call), before the events.
        """
        calls: list[tuple[Job, CheckedStep, StepRecord, dict[str, Any]]] = []
        for job, i in members:
            s = job.checked.steps[i]
            r = StepRecord(i, s.step.line, s.step.target, s.module, s.step.source)
            try:
                arguments = self._arguments(job, i)
                if job.plan.remaps[i] is not None:
                    _map_objects(job, i, arguments, r)
            except _Failure as f:
                job.trace.records.append(r)
                self._fail(job, r, f)
                if job.listener is not None:  # the step started and failed at once
                    job.step_started(s)
                    job.step_ended(r, 0.0)
                continue
            r.inputs = dict(arguments)
            calls.append((job, s, r, arguments))
        if not calls:
            return
        for job, s, _, _ in calls:
            if job.listener is not None:
                job.step_started(s)
        spec = calls[0][1].spec
        t0 = time.perf_counter()
        outputs: list[Any | _Failure]
        separate = False  # the batched call failed and its calls ran one by one
        try:
            if spec is None:  # bare assignment: RESULT=X
                outputs = [calls[0][3]["value"]]
            elif len(calls) > 1 and spec.batch is not None:
                outputs = self._call_batch(spec, [c[3] for c in calls], ctx)
            else:
                outputs = [self._call(spec, calls[0][3], ctx)]
        except _Failure as f:
            if spec is None or len(calls) == 1:
                outputs = [f]
            else:  # one bad argument set must not fail the others: run the batch's calls one by one
                outputs = self._one_by_one(spec, [c[3] for c in calls], ctx)
                separate = True
        elapsed = time.perf_counter() - t0
        for (job, s, r, _), out in zip(calls, outputs, strict=True):
            job.trace.records.append(r)
            try:
                if isinstance(out, _Failure):
                    raise out
                if job.plan.crops[s.index]:
                    out = _uncrop(job, s.index, r, out)
                r.output = self._check_output(s, out)
            except _Failure as f:
                self._fail(job, r, f)
                continue
            r.seconds = elapsed / len(calls)
            r.batch = 1 if separate else len(calls)
            job.values[s.index] = r.output
        for job, _, r, _ in calls:  # every record is complete before a listener hears of one
            if job.listener is not None:
                job.step_ended(r, elapsed / len(calls))

    def _one_by_one(self, spec: ModuleSpec, calls: list[dict[str, Any]], ctx: Context) -> list[Any | _Failure]:
        """Each argument set on its own call; a failing one gives its :class:`_Failure`."""
        out: list[Any | _Failure] = []
        for kwargs in calls:
            try:
                out.append(self._call(spec, kwargs, ctx))
            except _Failure as f:
                out.append(f)
        return out

    @staticmethod
    def _fail(job: Job, record: StepRecord, f: _Failure) -> None:
        error = StepError(
            f.message,
            line=record.line,
            module=record.module,
            target=record.target,
            source_line=record.source,
            trace=job.trace,
            cause=f.cause,
        )
        error.__cause__ = f.cause
        error.__suppress_context__ = True
        job.fail(record, error)

    def _arguments(self, job: Job, i: int) -> dict[str, Any]:
        values = job.values
        inputs = job.trace.inputs
        out: dict[str, Any] = {}
        for name, kind, payload, to_type, optional, exact in job.plan.args[i]:
            if kind == VALUE:
                raw = values[payload]
            elif kind == LITERAL:
                raw = payload
            elif kind == INPUT:
                raw = inputs[payload]
            elif kind == TEMPLATE:
                s = job.checked.steps[i]
                out[name] = payload.bind({n: lookup(s, n, values, inputs) for n in payload.variables})
                continue
            else:
                raw = resolve(job.checked.steps[i], payload, values, inputs)
            if to_type is not None and type(raw) is not exact:
                try:
                    raw = coerce(raw, to_type, optional)
                except TypeError as e:
                    raise _Failure(f"argument '{name}': {e}") from None
            out[name] = raw
        return out

    def _call(self, spec: ModuleSpec, kwargs: dict[str, Any], ctx: Context) -> Any:
        if spec.context_param is not None:
            kwargs = {**kwargs, spec.context_param: ctx.for_module(spec)}
        try:
            return spec.fn(**kwargs)
        except VisprogError as e:
            raise _Failure(str(e), e) from e
        except Exception as e:
            raise _Failure(f"{type(e).__name__}: {e}{raised_at(e, spec.fn)}", e) from e

    def _call_batch(self, spec: ModuleSpec, calls: list[dict[str, Any]], ctx: Context) -> list[Any]:
        assert spec.batch is not None
        try:
            outputs = list(spec.batch(calls, ctx.for_module(spec)))
        except VisprogError as e:
            raise _Failure(f"in a batch of {len(calls)}: {e}", e) from e
        except Exception as e:
            raise _Failure(f"in a batch of {len(calls)}: {type(e).__name__}: {e}{raised_at(e, spec.batch)}", e) from e
        if len(outputs) != len(calls):
            raise _Failure(
                f"the batch implementation of {spec.name} returned {len(outputs)} outputs for {len(calls)} calls"
            )
        return outputs

    @staticmethod
    def _check_output(s: CheckedStep, value: Any) -> Any:
        if s.spec is None or s.spec.returns is Type.ANY:
            return value
        try:
            return coerce(value, s.spec.returns)
        except TypeError as e:
            raise _Failure(f"{s.spec.name} returned a wrong value: {e}") from None


#: this package's folder: frames in it are the interpreter's, not a module's
_RUNNING = os.path.dirname(os.path.abspath(__file__)) + os.sep


def raised_at(error: BaseException, fn: Callable[..., Any]) -> str:
    """Where in a module's code ``error`` was raised, as `` (at FILE:LINE)``: the innermost frame of
    its traceback in the file that defines ``fn``, or else the innermost frame outside this package
    (the module's code called a library that raised). Empty when the traceback has neither."""
    frames = traceback.extract_tb(error.__traceback__)
    own = _code_file(fn)
    frame = next((f for f in reversed(frames) if own is not None and f.filename == own), None)
    if frame is None:
        frame = next((f for f in reversed(frames) if not os.path.abspath(f.filename).startswith(_RUNNING)), None)
    return "" if frame is None else f" (at {frame.filename}:{frame.lineno})"


def _code_file(fn: Any) -> str | None:
    """The file of ``fn``'s code: a function, a method, a ``functools.partial`` or a callable object."""
    for _ in range(8):  # unwrap a few layers at most
        code = getattr(fn, "__code__", None)
        if code is not None:
            return str(code.co_filename)
        fn = (
            getattr(fn, "__wrapped__", None)
            or getattr(fn, "func", None)
            or getattr(fn, "__func__", None)
            or type(fn).__call__
        )
    return None


def _uncrop(job: Job, i: int, r: StepRecord, output: Any) -> Any:
    """The image of a crop step's output (:func:`~visprog.running.framing.uncrop`)."""
    try:
        return uncrop(job.checked.steps[i].spec, output, i, job.offsets, r.notes)
    except TypeError as e:
        raise _Failure(str(e)) from None


def _map_objects(job: Job, i: int, arguments: dict[str, Any], r: StepRecord) -> None:
    remaps = job.plan.remaps[i]
    assert remaps is not None
    map_objects(remaps, arguments, job.offsets, r.notes)


def _listener_error(stop: Stopped, results: list[Trace | VisprogError]) -> ListenerError:
    return ListenerError(stop.message(), event=stop.event, trace=stop.job.trace, results=results, cause=stop.cause)
