"""Run checked programs on registered modules.

Steps run in dependency order. Steps that become ready together and use the
same module are handed to that module in one call when it declares a batch
implementation. Every run returns a :class:`~visprog.running.trace.Trace`; a failing
step raises :class:`~visprog.errors.StepError` carrying the trace so far.
:meth:`Interpreter.run_many` runs many programs through the same engine and
batches ready steps of one module across all of them.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from visprog.errors import StepError, VisprogError
from visprog.language import syntax
from visprog.language.checker import CheckedProgram, CheckedStep, check
from visprog.language.signatures import ModuleSpec, Registry
from visprog.language.values import Type, coerce, exact_type, type_of_value
from visprog.running.plugins import default_registry
from visprog.running.runtime import Context, RunCache, Runtime, default_runtime
from visprog.running.trace import StepRecord, Trace

__all__ = ["Interpreter", "run"]


class _Failure(Exception):
    """A step failed; ``message`` is what the user reads."""

    def __init__(self, message: str, cause: BaseException | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.cause = cause


_EXACT: dict[Type | None, type] = {t: exact for t in Type if (exact := exact_type(t)) is not None}


# How one argument of a step gets its value, worked out once per checked program: a tuple
# (name, kind, payload, to_type, optional, exact). ``kind`` says what ``payload`` is: the literal's
# (converted) value, the input's name, the index of the step whose value it is, the template, or an
# ast value (a list) resolved each run. ``to_type``: the type to convert to (None: none needed);
# values of exactly the Python type ``exact`` need no conversion.
_LITERAL, _INPUT, _VALUE, _TEMPLATE, _OTHER = range(5)
_ArgPlan = tuple[str, int, Any, "Type | None", bool, "type | None"]


class _Plan:
    """What running a checked program needs, computed once and kept on the program.

    ``successors`` and ``indegree`` replace a topological sorter (the checker guarantees the graph
    is acyclic); ``args`` says for each step where each argument comes from.
    """

    __slots__ = ("args", "indegree", "result_var", "returns", "successors")

    def __init__(self, checked: CheckedProgram) -> None:
        n = len(checked.steps)
        self.successors: list[list[int]] = [[] for _ in range(n)]
        self.indegree = [0] * n
        for step in checked.steps:  # in index order, so each successor list comes out sorted
            before = {src for src in step.sources.values() if type(src) is int}
            self.indegree[step.index] = len(before)
            for src in before:
                self.successors[src].append(step.index)
        self.args = [_step_args(s) for s in checked.steps]
        #: per step: the Python type whose outputs need no check (``None``: check every output)
        self.returns = [_EXACT.get(s.spec.returns) if s.spec is not None else None for s in checked.steps]
        self.result_var = checked.steps[checked.result].step.target

    @staticmethod
    def of(checked: CheckedProgram) -> _Plan:
        # Kept in the frozen program's instance dict (like functools.cached_property does).
        plan = checked.__dict__.get("_interpreter_plan")
        if plan is None:
            plan = checked.__dict__["_interpreter_plan"] = _Plan(checked)
        assert isinstance(plan, _Plan)
        return plan


def _step_args(s: CheckedStep) -> tuple[_ArgPlan, ...]:
    if s.spec is None:
        assert not isinstance(s.step.expr, syntax.Call)
        return (_arg("value", s.step.expr, s, None, False),)
    call = s.step.call
    assert call is not None
    out: list[_ArgPlan] = []
    for arg in call.args:
        param = s.spec.param(arg.name)
        assert param is not None  # the checker guarantees it
        if param.type is Type.TEMPLATE:
            out.append((arg.name, _TEMPLATE, s.templates[arg.name], None, param.optional, None))
        else:
            out.append(_arg(arg.name, arg.value, s, param.type, param.optional))
    return tuple(out)


def _arg(name: str, value: syntax.Value, s: CheckedStep, type_: Type | None, optional: bool) -> _ArgPlan:
    to_type = None if type_ is None or type_ is Type.ANY else type_
    if isinstance(value, syntax.Literal):
        if to_type is None:
            return (name, _LITERAL, value.value, None, optional, None)
        try:  # a literal converts the same way every run: do it once
            return (name, _LITERAL, coerce(value.value, to_type, optional), None, optional, None)
        except TypeError:  # reported when the step runs
            return (name, _LITERAL, value.value, to_type, optional, None)
    exact = _EXACT.get(to_type)
    if isinstance(value, syntax.Ref):
        source = s.sources[value.name]
        return (name, _INPUT if type(source) is str else _VALUE, source, to_type, optional, exact)
    return (name, _OTHER, value, to_type, optional, exact)


class _Job:
    """One program being run: its plan, computed values, ready steps, trace and failure."""

    __slots__ = ("checked", "error", "indegree", "pending", "plan", "ready", "trace", "values")

    def __init__(self, checked: CheckedProgram, trace: Trace) -> None:
        self.checked = checked
        self.trace = trace
        self.values: dict[int, Any] = {}
        self.plan = _Plan.of(checked)
        self.indegree = list(self.plan.indegree)
        self.ready = [i for i, d in enumerate(self.indegree) if d == 0]
        self.pending = len(self.indegree)
        self.error: StepError | None = None

    def done(self, index: int) -> None:
        self.pending -= 1
        indegree = self.indegree
        for nxt in self.plan.successors[index]:
            indegree[nxt] -= 1
            if indegree[nxt] == 0:
                self.ready.append(nxt)


class Interpreter:
    """Runs programs against a registry with one shared runtime (device, model pool).

    ``max_batch`` caps how many steps go into one batched module call
    (``None``: no cap; ``1``: never batch).
    """

    def __init__(
        self,
        registry: Registry | None = None,
        runtime: Runtime | None = None,
        *,
        max_batch: int | None = None,
    ) -> None:
        self.registry = registry or default_registry()
        self.runtime = runtime or default_runtime()
        if max_batch is not None and max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self.max_batch = max_batch

    def check(self, program: str | syntax.Program, inputs: Mapping[str, Any] | None = None) -> CheckedProgram:
        types = None if inputs is None else {k: type_of_value(v) for k, v in inputs.items()}
        return check(program, self.registry, types)

    def run(
        self,
        program: CheckedProgram | str | syntax.Program,
        inputs: Mapping[str, Any],
        *,
        cache: RunCache | None = None,
    ) -> Trace:
        """Run ``program`` on ``inputs`` (``{"IMAGE": <PIL image>}``) and return its trace."""
        job = self._job(program, inputs)
        self._execute([job], Context(self.runtime, cache or RunCache()))
        if job.error is not None:
            raise job.error
        return job.trace

    def run_many(
        self,
        jobs: Sequence[tuple[CheckedProgram | str | syntax.Program, Mapping[str, Any]]],
        *,
        cache: RunCache | None = None,
    ) -> list[Trace | VisprogError]:
        """Run many programs at once; results in job order.

        Ready steps of the same batch-capable module across all jobs share batched calls of at most
        ``max_batch`` argument sets. A job that fails to check gets its
        :class:`~visprog.errors.ProgramError`, a job whose step fails gets its
        :class:`~visprog.errors.StepError` (with its partial trace); the other jobs go on. One
        :class:`~visprog.running.runtime.RunCache` serves every job of the call.
        """
        results: list[Trace | VisprogError | None] = [None] * len(jobs)
        running: list[tuple[int, _Job]] = []
        for k, (program, inputs) in enumerate(jobs):
            try:
                running.append((k, self._job(program, inputs)))
            except VisprogError as e:
                results[k] = e
        self._execute([job for _, job in running], Context(self.runtime, cache or RunCache()))
        for k, job in running:
            results[k] = job.error if job.error is not None else job.trace
        out: list[Trace | VisprogError] = []
        for r in results:
            assert r is not None
            out.append(r)
        return out

    def _job(self, program: CheckedProgram | str | syntax.Program, inputs: Mapping[str, Any]) -> _Job:
        checked = program if isinstance(program, CheckedProgram) else self.check(program, inputs)
        missing = [name for name in checked.used_inputs if name not in inputs]
        if missing:
            raise VisprogError(
                f"the program uses input(s) {', '.join(missing)} but only {', '.join(inputs) or 'none'} were given"
            )
        return _Job(checked, Trace(checked.source, {k: inputs[k] for k in checked.used_inputs}))

    def _execute(self, jobs: list[_Job], ctx: Context) -> None:
        """Run every job to its end or its first failing step (recorded on the job, never raised)."""
        start = time.perf_counter()
        active = list(jobs)
        while active:
            ready: list[tuple[_Job, int]] = []
            for job in active:
                if job.ready:
                    job.ready.sort()
                    ready.extend((job, i) for i in job.ready)
                    job.ready = []
            if len(ready) == 1:  # the common case of one program: no grouping to do
                job, i = ready[0]
                self._run_one(job, i, ctx)
                if job.error is None:
                    job.done(i)
            else:
                for group in self._groups(ready):
                    members = [(job, i) for job, i in group if job.error is None]
                    if members:
                        self._run_group(members, ctx)
                    for job, i in members:
                        if job.error is None:
                            job.done(i)
            still = []
            for job in active:
                if job.error is not None:
                    job.trace.seconds = time.perf_counter() - start
                    job.trace.error = str(job.error)
                elif not job.pending:
                    job.trace.seconds = time.perf_counter() - start
                    job.trace.result = job.values[job.checked.result]
                    job.trace.result_var = job.plan.result_var
                elif not job.ready:  # cannot happen for a checked (acyclic) program
                    raise AssertionError(f"no step of the program can run, {job.pending} left")
                else:
                    still.append(job)
            active = still

    def _groups(self, ready: list[tuple[_Job, int]]) -> list[list[tuple[_Job, int]]]:
        """Ready steps in job and line order; steps of one batch-capable module share a group across jobs."""
        if len(ready) == 1:
            return [ready]
        groups: dict[Any, list[tuple[_Job, int]]] = {}
        order = {id(job): n for n, job in enumerate(dict.fromkeys(job for job, _ in ready))}
        for job, i in ready:
            spec = job.checked.steps[i].spec
            key = spec.name if spec is not None and spec.batch is not None else ("single", id(job), i)
            groups.setdefault(key, []).append((job, i))
        out: list[list[tuple[_Job, int]]] = []
        cap = self.max_batch or len(ready) or 1
        for group in groups.values():
            out.extend(group[k : k + cap] for k in range(0, len(group), cap))
        return sorted(out, key=lambda g: (order[id(g[0][0])], g[0][1]))

    def _run_one(self, job: _Job, i: int, ctx: Context) -> None:
        """Run one step on its own: :meth:`_run_group` for a single member, without the lists."""
        s = job.checked.steps[i]
        r = StepRecord(i, s.step.line, s.step.target, s.module, s.step.source)
        job.trace.records.append(r)
        try:
            r.inputs = arguments = self._arguments(job, i)  # the module gets its own keyword dict
            spec = s.spec
            t0 = time.perf_counter()
            output = arguments["value"] if spec is None else self._call(spec, arguments, ctx)
            r.seconds = time.perf_counter() - t0
            r.output = output if type(output) is job.plan.returns[i] else self._check_output(s, output)
        except _Failure as f:
            self._fail(job, r, f)
            return
        job.values[i] = r.output

    def _run_group(self, members: list[tuple[_Job, int]], ctx: Context) -> None:
        """Run one module call for ``members``; a failure is recorded on the job(s) it belongs to."""
        steps = [job.checked.steps[i] for job, i in members]
        records = [StepRecord(s.index, s.step.line, s.step.target, s.module, s.step.source) for s in steps]
        for (job, _), r in zip(members, records, strict=True):
            job.trace.records.append(r)
        calls: list[tuple[_Job, CheckedStep, StepRecord, dict[str, Any]]] = []
        for (job, _), s, r in zip(members, steps, records, strict=True):
            if job.error is not None:
                continue
            try:
                arguments = self._arguments(job, s.index)
            except _Failure as f:
                self._fail(job, r, f)
                continue
            r.inputs = dict(arguments)
            calls.append((job, s, r, arguments))
        calls = [c for c in calls if c[0].error is None]
        if not calls:
            return
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
                self._fail(calls[0][0], calls[0][2], f)
                return
            # One bad argument set must not fail the others: run the batch's calls one by one.
            outputs = self._one_by_one(spec, [c[3] for c in calls], ctx)
            separate = True
        elapsed = time.perf_counter() - t0
        for (job, s, r, _), out in zip(calls, outputs, strict=True):
            # A job's first failing step fails the job; its other steps in this call keep what they computed.
            try:
                if isinstance(out, _Failure):
                    raise out
                r.output = self._check_output(s, out)
            except _Failure as f:
                if job.error is None:
                    self._fail(job, r, f)
                else:
                    r.error = f.message
                continue
            r.seconds = elapsed / len(calls)
            r.batch = 1 if separate else len(calls)
            job.values[s.index] = r.output

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
    def _fail(job: _Job, record: StepRecord, f: _Failure) -> None:
        record.error = f.message
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
        job.error = error

    def _arguments(self, job: _Job, i: int) -> dict[str, Any]:
        values = job.values
        inputs = job.trace.inputs
        out: dict[str, Any] = {}
        for name, kind, payload, to_type, optional, exact in job.plan.args[i]:
            if kind == _VALUE:
                raw = values[payload]
            elif kind == _LITERAL:
                raw = payload
            elif kind == _INPUT:
                raw = inputs[payload]
            elif kind == _TEMPLATE:
                s = job.checked.steps[i]
                out[name] = payload.bind({n: _lookup(s, n, values, inputs) for n in payload.variables})
                continue
            else:
                raw = _resolve(job.checked.steps[i], payload, values, inputs)
            if to_type is not None and type(raw) is not exact:
                try:
                    raw = coerce(raw, to_type, optional)
                except TypeError as e:
                    raise _Failure(f"argument '{name}': {e}") from None
            out[name] = raw
        return out

    def _call(self, spec: ModuleSpec, kwargs: dict[str, Any], ctx: Context) -> Any:
        if spec.context_param is not None:
            kwargs = {**kwargs, spec.context_param: ctx.for_module(spec.name, spec.backends, spec.default_backend)}
        try:
            return spec.fn(**kwargs)
        except VisprogError as e:
            raise _Failure(str(e), e) from e
        except Exception as e:
            raise _Failure(f"{type(e).__name__}: {e}", e) from e

    def _call_batch(self, spec: ModuleSpec, calls: list[dict[str, Any]], ctx: Context) -> list[Any]:
        assert spec.batch is not None
        try:
            outputs = list(spec.batch(calls, ctx.for_module(spec.name, spec.backends, spec.default_backend)))
        except VisprogError as e:
            raise _Failure(f"in a batch of {len(calls)}: {e}", e) from e
        except Exception as e:
            raise _Failure(f"in a batch of {len(calls)}: {type(e).__name__}: {e}", e) from e
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


def _lookup(s: CheckedStep, name: str, values: dict[int, Any], inputs: Mapping[str, Any]) -> Any:
    source = s.sources[name]
    return inputs[source] if isinstance(source, str) else values[source]


def _resolve(s: CheckedStep, v: syntax.Value, values: dict[int, Any], inputs: Mapping[str, Any]) -> Any:
    if isinstance(v, syntax.Literal):
        return v.value
    if isinstance(v, syntax.ListValue):
        return [_resolve(s, item, values, inputs) for item in v.items]
    return _lookup(s, v.name, values, inputs)


def run(program: str | syntax.Program | CheckedProgram, inputs: Mapping[str, Any], **kwargs: Any) -> Trace:
    """Run a program with the default registry and a new runtime."""
    return Interpreter(**kwargs).run(program, inputs)
