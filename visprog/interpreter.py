"""Run checked programs on registered modules.

Steps run in dependency order. Steps that become ready together and use the
same module are handed to that module in one call when it declares a batch
implementation. Every run returns a :class:`~visprog.trace.Trace`; a failing
step raises :class:`~visprog.errors.StepError` carrying the trace so far.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from visprog import ast
from visprog.checker import CheckedProgram, CheckedStep, check
from visprog.errors import StepError, VisprogError
from visprog.registry import ModuleSpec, Registry, default_registry
from visprog.runtime import Context, RunCache, Runtime, default_runtime
from visprog.trace import StepRecord, Trace
from visprog.types import Type, coerce, type_of_value

__all__ = ["Interpreter", "run"]


class _Failure(Exception):
    """A step failed; ``message`` is what the user reads."""

    def __init__(self, message: str, cause: BaseException | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.cause = cause


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

    def check(self, program: str | ast.Program, inputs: Mapping[str, Any] | None = None) -> CheckedProgram:
        types = None if inputs is None else {k: type_of_value(v) for k, v in inputs.items()}
        return check(program, self.registry, types)

    def run(
        self,
        program: CheckedProgram | str | ast.Program,
        inputs: Mapping[str, Any],
        *,
        cache: RunCache | None = None,
    ) -> Trace:
        """Run ``program`` on ``inputs`` (``{"IMAGE": <PIL image>}``) and return its trace."""
        checked = program if isinstance(program, CheckedProgram) else self.check(program, inputs)
        missing = [name for name in checked.used_inputs if name not in inputs]
        if missing:
            raise VisprogError(
                f"the program uses input(s) {', '.join(missing)} but only {', '.join(inputs) or 'none'} were given"
            )
        trace = Trace(checked.source, {k: inputs[k] for k in checked.used_inputs})
        ctx = Context(self.runtime, cache or RunCache())
        values: dict[int, Any] = {}
        sorter = checked.graph.sorter()
        start = time.perf_counter()
        try:
            while sorter.is_active():
                ready = sorted(sorter.get_ready())
                for group in self._groups(checked, ready):
                    self._run_group(checked, group, values, trace, ctx)
                    sorter.done(*group)
        except StepError as e:
            trace.seconds = time.perf_counter() - start
            trace.error = str(e)
            e.trace = trace
            raise
        trace.seconds = time.perf_counter() - start
        trace.result = values[checked.result]
        trace.result_var = checked.steps[checked.result].step.target
        return trace

    def _groups(self, checked: CheckedProgram, ready: list[int]) -> list[list[int]]:
        """Ready steps in line order; steps of one batch-capable module share a group."""
        groups: dict[Any, list[int]] = {}
        for i in ready:
            spec = checked.steps[i].spec
            key = spec.name if spec is not None and spec.batch is not None else ("single", i)
            groups.setdefault(key, []).append(i)
        out: list[list[int]] = []
        cap = self.max_batch or len(ready) or 1
        for group in groups.values():
            out.extend(group[k : k + cap] for k in range(0, len(group), cap))
        return sorted(out, key=lambda g: g[0])

    def _run_group(
        self,
        checked: CheckedProgram,
        group: list[int],
        values: dict[int, Any],
        trace: Trace,
        ctx: Context,
    ) -> None:
        steps = [checked.steps[i] for i in group]
        records = [StepRecord(s.index, s.step.line, s.step.target, s.module, s.step.source) for s in steps]
        trace.records.extend(records)
        current = records[0]
        try:
            arguments = []
            for s, r in zip(steps, records, strict=True):
                current = r
                arguments.append(self._arguments(s, values, trace.inputs))
                r.inputs = dict(arguments[-1])
            t0 = time.perf_counter()
            spec = steps[0].spec
            if spec is None:  # bare assignment: RESULT=X
                outputs = [arguments[0]["value"]]
            elif len(steps) > 1 and spec.batch is not None:
                current = records[0]
                outputs = self._call_batch(spec, arguments, ctx)
            else:
                current = records[0]
                outputs = [self._call(spec, arguments[0], ctx)]
            elapsed = time.perf_counter() - t0
            for s, r, out in zip(steps, records, outputs, strict=True):
                current = r
                r.output = self._check_output(s, out)
                r.seconds = elapsed / len(steps)
                r.batch = len(steps)
                values[s.index] = r.output
        except _Failure as f:
            current.error = f.message
            raise StepError(
                f.message,
                line=current.line,
                module=current.module,
                target=current.target,
                source_line=current.source,
                trace=trace,
                cause=f.cause,
            ) from f.cause

    def _arguments(self, s: CheckedStep, values: dict[int, Any], inputs: Mapping[str, Any]) -> dict[str, Any]:
        def resolve(v: ast.Value) -> Any:
            if isinstance(v, ast.Literal):
                return v.value
            if isinstance(v, ast.ListValue):
                return [resolve(i) for i in v.items]
            source = s.sources[v.name]
            return inputs[source] if isinstance(source, str) else values[source]

        def lookup(name: str) -> Any:
            source = s.sources[name]
            return inputs[source] if isinstance(source, str) else values[source]

        if s.spec is None:
            assert not isinstance(s.step.expr, ast.Call)
            return {"value": resolve(s.step.expr)}
        call = s.step.call
        assert call is not None
        out: dict[str, Any] = {}
        for arg in call.args:
            param = s.spec.param(arg.name)
            assert param is not None  # the checker guarantees it
            if param.type is Type.TEMPLATE:
                expression = s.templates[arg.name]
                out[arg.name] = expression.bind({n: lookup(n) for n in expression.variables})
                continue
            raw = resolve(arg.value)
            try:
                out[arg.name] = coerce(raw, param.type, param.optional)
            except TypeError as e:
                raise _Failure(f"argument '{arg.name}': {e}") from None
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


def run(program: str | ast.Program | CheckedProgram, inputs: Mapping[str, Any], **kwargs: Any) -> Trace:
    """Run a program with the default registry and a new runtime."""
    return Interpreter(**kwargs).run(program, inputs)
