"""What a run did, step by step: inputs, output, time, error; and the trace as data.

A :class:`Trace` is returned by every run and carried by every
:class:`~visprog.errors.StepError`, so a failing step never loses the steps
that ran, before it or after it. The HTML page of a trace is drawn by :mod:`visprog.presentation.report`.

A trace is data: :meth:`Trace.to_dict` and :meth:`Trace.to_json` write it,
:meth:`Trace.from_dict` and :meth:`Trace.from_json` read it back, with every
value of every step. The schema, version ``visprog.trace/1`` (:data:`SCHEMA`)::

    {
      "schema": "visprog.trace/1",
      "source": "BOX0=Loc(image=IMAGE, object='dog')\nRESULT=BOX0",
      "ok": true,                                  (derived from the errors; not read back)
      "inputs": {"IMAGE": VALUE, ...},
      "steps": [
        {"index": 0, "line": 1, "target": "BOX0", "module": "Loc", "source": "BOX0=Loc(...)",
         "inputs": {"image": VALUE, "object": VALUE}, "output": VALUE,
         "seconds": 0.012, "error": null, "batch": 1,
         "notes": ["box: the objects of BOX1, found on IMAGE0, a crop of IMAGE, mapped onto IMAGE ..."]},
        ...                                        (in the order the steps ran)
      ],
      "result": VALUE, "result_var": "RESULT", "seconds": 0.015, "error": null,
      "warnings": ["line 2, col 1: the program has no result step: ..."],   (what the checker warned of)
      "skipped": [{"index": 3, "line": 4, "target": "N", "module": "Count", "source": "N=Count(box=BOX0)",
                   "needs": [2]}, ...],     (steps not run: they need the failed steps on these lines)
      "images": [IMAGE, ...],                      (each image once; VALUEs refer to them by position)
      "objects": [[DETECTION, ...], ...],          (each Objects value once, likewise)
      "masks": [MASK, ...]                         (each mask once, likewise)
    }

A VALUE is a string, an integer, a boolean, ``null`` or a finite number as
itself; a list as a list of VALUEs; anything else an object with a ``type``:

- ``{"type": "image", "ref": 0}``: ``images[0]``; ``{"type": "objects", "ref": 0}``: ``objects[0]``
  (a list of detections). A value used in several places is stored once and read back as one object.
- ``{"type": "detection", "box": [x0, y0, x1, y1], "score": 0.9, "label": "dog", "mask": 0}``
  (a detection on its own; ``mask`` is a position in ``masks`` or ``null``)
- ``{"type": "template", "text": "{A} > 2", "bindings": {"A": VALUE}}``: a bound Eval expression
- ``{"type": "float", "value": "nan"}`` (also ``"inf"``, ``"-inf"``: JSON has no such numbers)
- ``{"type": "tuple", "items": [VALUE, ...]}``, ``{"type": "dict", "items": [[VALUE, VALUE], ...]}``
- ``{"type": "array", "dtype": "<f4", "shape": [2, 3], "data": BASE64}``: a numpy array, its bytes
  zlib-compressed (a numpy scalar is written as the Python number it holds)
- ``{"type": "other", "class": "module.Name", "repr": "..."}``: a value of any other type, kept as
  its ``repr`` and read back as an :class:`OpaqueValue`

An IMAGE is ``{"mode": "RGB", "size": [width, height], "format": "png", "data": BASE64}``. Images
are PNG by default, so every pixel is kept (modes ``1``, ``L``, ``LA``, ``P`` with its palette,
``RGB``, ``RGBA``, ``I;16``); images of other modes are ``"raw"``: their pixel bytes
(``Image.tobytes()``), zlib-compressed. ``to_dict(image_format="jpeg")`` writes RGB and grey images
as JPEG instead: smaller, not exact.

A DETECTION is ``{"box": [...], "score": 0.9, "label": "dog", "mask": 0}``. A MASK is run-length
encoded as in COCO's uncompressed RLE: ``{"size": [height, width], "counts": [...]}``, the lengths of
alternating runs of false and true pixels (starting with false), the pixels read column by column.

The schema version changes when a reader of the old one would misread the new one; fields may be
added within a version (``notes`` and ``warnings`` and ``skipped`` were: a trace without them reads as
having none).

A failing step does not stop the steps that do not need its value: they run after it, and the trace
holds them. The steps that need it (directly or through other steps) are not run; the trace lists
them in ``skipped`` with the lines of the failed steps they need. :meth:`Trace.to_text` says which ran
after the failure and which did not. :meth:`Trace.from_dict` refuses another version with
:class:`~visprog.errors.TraceFormatError`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from visprog.errors import TraceFormatError
from visprog.language.values import Template, describe_value
from visprog.running.encoding import ImageFormat, OpaqueValue, ValueReader, ValueWriter
from visprog.running.wording import after_failure, step_call

__all__ = ["SCHEMA", "ImageFormat", "OpaqueValue", "Skipped", "StepRecord", "Trace"]

#: The schema version written into every trace's data (``"schema"``).
SCHEMA = "visprog.trace/1"
_SCHEMA_NAME = "visprog.trace"


@dataclass(slots=True)
class StepRecord:
    """One step as it ran."""

    index: int
    line: int
    target: str
    module: str
    source: str
    inputs: dict[str, Any] = field(default_factory=dict)
    output: Any = None
    seconds: float = 0.0
    error: str | None = None
    #: how many steps shared the one module call that computed this step
    batch: int = 1
    #: what the interpreter did besides calling the module (objects mapped between frames, a crop's place)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error is None

    def summary(self) -> str:
        """The step in two lines: its call as the program wrote it, each variable with its value in brackets
        (``IMAGE1 = Emoji(image=IMAGE [512x512], object=OBJ0 [Objects (1)], emoji='smiling_face')``), then
        its output and time, or its error."""
        if self.module == "=":  # a bare assignment, RESULT=X: shown as written
            head = f"line {self.line:>2}  {self.source.strip()}"
        else:
            call = step_call(self.source, self.inputs, self.output if self.error is None else _NOTHING)
            if call is None:  # a source that does not parse (written by hand): the values alone
                call = ", ".join(f"{k}={_show(v)}" for k, v in self.inputs.items())
            head = f"line {self.line:>2}  {self.target} = {self.module}({call})"
        batch = f" [batch of {self.batch}]" if self.batch > 1 else ""
        notes = "".join(f"\n         note: {n}" for n in self.notes)
        if self.error is not None:
            return f"{head}{notes}\n         FAILED: {self.error}"
        return f"{head}{notes}\n         -> {_show(self.output)}  ({self.seconds * 1000:.1f} ms{batch})"


#: stands for "no output" (a failed step's) where ``None`` is a value
_NOTHING = object()


@dataclass(frozen=True, slots=True)
class Skipped:
    """A step that was not run: it needs the value of a step that failed (``needs``: those steps' lines)."""

    index: int
    line: int
    target: str
    module: str
    source: str
    needs: tuple[int, ...]


def _strings(data: Mapping[str, Any], name: str, where: str) -> list[str]:
    """An optional list of strings (absent in traces written before it was added: empty)."""
    value = data.get(name, [])
    if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
        path = f"{where}.{name}" if where else name
        raise TraceFormatError(f"{path}: expected a list of strings, got {json.dumps(value)[:60]}")
    return value


def _skipped(reader: ValueReader, data: Mapping[str, Any]) -> list[Skipped]:
    """The optional ``skipped`` list (absent in traces written before it was added: empty)."""
    entries = data.get("skipped", [])
    if not isinstance(entries, list):
        raise TraceFormatError(f"skipped: expected a list, got {json.dumps(entries)[:60]}")
    out = []
    for k, entry in enumerate(entries):
        where = f"skipped[{k}]"
        if not isinstance(entry, Mapping):
            raise TraceFormatError(f"{where}: expected an object, got {type(entry).__name__}")
        needs = reader.field(entry, "needs", list, where)
        if not all(type(n) is int for n in needs):
            raise TraceFormatError(f"{where}.needs: expected a list of line numbers, got {json.dumps(needs)[:60]}")
        out.append(
            Skipped(
                index=reader.field(entry, "index", int, where),
                line=reader.field(entry, "line", int, where),
                target=reader.field(entry, "target", str, where),
                module=reader.field(entry, "module", str, where),
                source=reader.field(entry, "source", str, where),
                needs=tuple(needs),
            )
        )
    return out


def _show(value: Any) -> str:
    if isinstance(value, Template):
        return f'"{value}"'
    text = describe_value(value)
    return text if len(text) <= 80 else text[:77] + "..."


@dataclass
class Trace:
    """The record of one run of a program."""

    source: str
    inputs: dict[str, Any] = field(default_factory=dict)
    records: list[StepRecord] = field(default_factory=list)
    result: Any = None
    result_var: str | None = None
    seconds: float = 0.0
    error: str | None = None
    #: what the checker accepted but warned of (a program without a result step), one line each
    warnings: list[str] = field(default_factory=list)
    #: after a failure, the steps not run because they need a failed step's value, in program order
    skipped: list[Skipped] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error is None and all(r.ok for r in self.records)

    @property
    def values(self) -> dict[str, Any]:
        """Every variable's latest computed value, in program order (inputs first)."""
        out = dict(self.inputs)
        for r in sorted(self.records, key=lambda r: r.index):
            if r.ok:
                out[r.target] = r.output
        return out

    def step(self, target: str) -> StepRecord:
        """The record of the latest assignment to ``target`` that ran."""
        found = [r for r in self.records if r.target == target]
        if not found:
            raise KeyError(f"no step assigned '{target}' in this run")
        return max(found, key=lambda r: r.index)

    def seconds_by_module(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for r in self.records:
            out[r.module] = out.get(r.module, 0.0) + r.seconds
        return out

    @property
    def failed(self) -> StepRecord | None:
        """The record of the step whose failure failed the run (the first to fail), if a step failed."""
        return next((r for r in self.records if r.error is not None), None)

    def after_failure(self) -> str | None:
        """What happened after the first failing step, in words: which steps ran after it and which did
        not (``"ran after it: lines 3, 6 (independent of it); not run: lines 4, 5 (they need line 2)"``).
        ``None`` when no step failed."""
        at = next((k for k, r in enumerate(self.records) if r.error is not None), None)
        if at is None:
            return None
        after = [(r.line, r.error is not None) for r in self.records[at + 1 :]]  # records are in run order
        return after_failure(after, [(s.line, s.needs) for s in self.skipped])

    def to_text(self) -> str:
        """Every step as :meth:`StepRecord.summary` writes it, in program order, then how the run ended:
        the variable that holds the result (its value is on its step's line), or where the run failed and
        what ran after it (:meth:`after_failure`)."""
        lines = [f"warning: {w}" for w in self.warnings]
        lines += [r.summary() for r in sorted(self.records, key=lambda r: r.index)]
        failed = self.failed
        if failed is not None:
            lines.append(f"run failed at line {failed.line} ({failed.module}); {self.after_failure()}")
        elif self.error is not None:
            lines.append(f"run failed: {self.error}")
        else:
            total = f"total {self.seconds * 1000:.1f} ms"
            ran = [r for r in self.records if r.target == self.result_var]
            holder = max(ran, key=lambda r: r.index) if ran else None
            if holder is not None and holder.ok:  # its value is on its line: not written again
                lines.append(f"result: {holder.target} (line {holder.line}), {total}")
            else:
                lines.append(f"result: {_show(self.result)}  ({total})")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.to_text()

    # --- as data ------------------------------------------------------------------------------

    def to_dict(self, *, image_format: ImageFormat = "png") -> dict[str, Any]:
        """The trace as JSON-ready data (schema :data:`SCHEMA`, described in this module's docstring).

        Images are PNG (every pixel kept) unless ``image_format="jpeg"``; masks are run-length
        encoded. Each image, Objects value and mask is written once, however often the trace uses it.
        """
        if image_format not in ("png", "jpeg"):
            raise ValueError(f"image_format must be 'png' or 'jpeg', got {image_format!r}")
        writer = ValueWriter(image_format)
        steps = [
            {
                "index": r.index,
                "line": r.line,
                "target": r.target,
                "module": r.module,
                "source": r.source,
                "inputs": {name: writer.value(v) for name, v in r.inputs.items()},
                "output": writer.value(r.output),
                "seconds": r.seconds,
                "error": r.error,
                "batch": r.batch,
                "notes": list(r.notes),
            }
            for r in self.records
        ]
        return {
            "schema": SCHEMA,
            "source": self.source,
            "ok": self.ok,
            "inputs": {name: writer.value(v) for name, v in self.inputs.items()},
            "steps": steps,
            "result": writer.value(self.result),
            "result_var": self.result_var,
            "seconds": self.seconds,
            "error": self.error,
            "warnings": list(self.warnings),
            "skipped": [
                {
                    "index": k.index,
                    "line": k.line,
                    "target": k.target,
                    "module": k.module,
                    "source": k.source,
                    "needs": list(k.needs),
                }
                for k in self.skipped
            ],
            "images": writer.images,
            "objects": writer.objects,
            "masks": writer.masks,
        }

    def to_json(self, *, image_format: ImageFormat = "png", indent: int | None = None) -> str:
        """:meth:`to_dict` as JSON text (compact unless ``indent`` is given)."""
        separators = (",", ":") if indent is None else None
        return json.dumps(
            self.to_dict(image_format=image_format), indent=indent, separators=separators, allow_nan=False
        )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Trace:
        """The trace that :meth:`to_dict` wrote. Raises :class:`~visprog.errors.TraceFormatError`
        (saying where) for data that is not a trace of schema :data:`SCHEMA`."""
        if not isinstance(data, Mapping):
            raise TraceFormatError(f"a trace must be a JSON object, got {type(data).__name__}")
        schema = data.get("schema")
        if schema != SCHEMA:
            if isinstance(schema, str) and schema.startswith(_SCHEMA_NAME + "/"):
                raise TraceFormatError(f"trace schema {schema!r} is not supported: this visprog reads {SCHEMA!r}")
            raise TraceFormatError(f"not a visprog trace: 'schema' is {schema!r}, expected {SCHEMA!r}")
        reader = ValueReader(data)
        records = []
        for k, step in enumerate(reader.field(data, "steps", list, "")):
            where = f"steps[{k}]"
            if not isinstance(step, Mapping):
                raise TraceFormatError(f"{where}: expected an object, got {type(step).__name__}")
            inputs = reader.field(step, "inputs", dict, where)
            records.append(
                StepRecord(
                    index=reader.field(step, "index", int, where),
                    line=reader.field(step, "line", int, where),
                    target=reader.field(step, "target", str, where),
                    module=reader.field(step, "module", str, where),
                    source=reader.field(step, "source", str, where),
                    inputs={name: reader.value(v, f"{where}.inputs.{name}") for name, v in inputs.items()},
                    output=reader.value(step.get("output"), f"{where}.output"),
                    seconds=float(reader.field(step, "seconds", (int, float), where)),
                    error=reader.field(step, "error", (str, type(None)), where),
                    batch=reader.field(step, "batch", int, where),
                    notes=_strings(step, "notes", where),
                )
            )
        inputs = reader.field(data, "inputs", dict, "")
        return cls(
            source=reader.field(data, "source", str, ""),
            inputs={name: reader.value(v, f"inputs.{name}") for name, v in inputs.items()},
            records=records,
            result=reader.value(data.get("result"), "result"),
            result_var=reader.field(data, "result_var", (str, type(None)), ""),
            seconds=float(reader.field(data, "seconds", (int, float), "")),
            error=reader.field(data, "error", (str, type(None)), ""),
            warnings=_strings(data, "warnings", ""),
            skipped=_skipped(reader, data),
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> Trace:
        """The trace that :meth:`to_json` wrote (see :meth:`from_dict`)."""
        try:
            data = json.loads(text)
        except ValueError as e:
            raise TraceFormatError(f"a trace must be JSON: {e}") from None
        return cls.from_dict(data)
