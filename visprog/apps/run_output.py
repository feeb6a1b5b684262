"""What a run shows: the answer on standard output and the rest on standard error, or one JSON object
(``--json``); and the files ``-o`` names (the result image, or a folder with every image step).

What came from the program, the model or the answer is shown with its control characters escaped and secrets
masked (:func:`visprog.apps.console.shown`; the answer is escaped only, not masked: it is the program's);
the JSON object is escaped by ``json.dumps``, its error masked.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from visprog.apps.console import UsageError, diagnostic_data, escape_controls, severity_label, shown, stderr_of
from visprog.errors import ProgramError, StepError, VisprogError
from visprog.language.values import Image, describe_value
from visprog.llm.masking import mask_secrets

if TYPE_CHECKING:
    from visprog.running.tracing import Trace

__all__ = [
    "OutputTarget",
    "RunReport",
    "check_trace_path",
    "json_value",
    "output_target",
    "show_run",
    "write_outputs",
]


@dataclass(frozen=True)
class OutputTarget:
    """What ``-o`` names: the result image ``file``, or a ``folder`` for ``result.png`` and every image step."""

    file: Path | None = None
    folder: Path | None = None


def output_target(arg: str | None) -> OutputTarget | None:
    """``-o``: a path ending in an image suffix is the result file, anything else a folder; checked before a run."""
    if not arg:
        return None
    from PIL import Image as PILImage

    path = Path(arg)
    writable = {ext for ext, fmt in PILImage.registered_extensions().items() if fmt in PILImage.SAVE}
    if not arg.endswith(("/", os.sep)) and path.suffix.lower() in writable:
        if path.is_dir():
            raise UsageError(f"-o {arg}: that is a folder, but a path ending in {path.suffix} names the result file")
        target, folder = OutputTarget(file=path), path.parent
    else:
        if path.exists() and not path.is_dir():
            raise UsageError(
                f"-o {arg}: that is a file, but -o names a folder unless the path ends in an image suffix "
                "such as .png or .jpg"
            )
        target, folder = OutputTarget(folder=path), path
    _check_parents(folder, f"-o {arg}")
    return target


def _check_parents(folder: Path, what: str) -> None:
    for parent in (folder, *folder.parents):  # the nearest folder that exists must be one
        if parent.exists():
            if not parent.is_dir():
                raise UsageError(f"{what}: {parent} is a file, not a folder")
            break


def check_trace_path(arg: str | None) -> None:
    """``--trace FILE``, checked before a run: a :class:`UsageError` when it names a folder, or when a file stands
    where one of its folders should be."""
    if not arg:
        return
    path = Path(arg)
    if path.is_dir() or arg.endswith(("/", os.sep)):
        raise UsageError(f"--trace {arg}: that is a folder; --trace names the HTML file to write (trace.html)")
    _check_parents(path.parent, f"--trace {arg}")


def _save_trace(trace: Trace, path: str, label: str | None) -> Path:
    from visprog.presentation.report import save_html  # only with --trace: keeps `visprog check` fast

    try:
        return save_html(trace, path, text=label)
    except OSError as e:
        raise VisprogError(f"--trace {path}: cannot write the trace page ({e.strerror or e})") from e


def write_outputs(trace: Trace, target: OutputTarget) -> list[Path]:
    """The files ``-o`` asks for: the result image, and in a folder every image step too (also of a failed run)."""
    from visprog.running.images import save_image  # numpy: keeps `visprog check` fast

    written = []
    if target.folder is not None:
        for record in sorted(trace.records, key=lambda r: r.index):
            if record.ok and isinstance(record.output, Image) and record.module not in ("Result", "="):
                step = target.folder / "steps" / f"{record.line:02d}_{record.target}.png"
                written.append(save_image(record.output, step))
    if trace.ok and isinstance(trace.result, Image):
        written.append(save_image(trace.result, target.file or (target.folder or Path()) / "result.png"))
    return written


def json_value(value: Any) -> Any:
    """``value`` as JSON: text, numbers, booleans and lists of them as they are; anything else described."""
    if value is None or isinstance(value, (str, int, bool)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, (list, tuple)) and all(v is None or isinstance(v, (str, int, float, bool)) for v in value):
        return [json_value(v) for v in value]
    return describe_value(value)


def _error_data(error: VisprogError) -> dict[str, Any]:
    data: dict[str, Any] = {"type": type(error).__name__, "message": mask_secrets(str(error))}
    if isinstance(error, StepError):
        data.update(line=error.line, module=error.module, target=error.target, reason=error.reason)
    if isinstance(error, ProgramError):
        data["diagnostics"] = [diagnostic_data(d, "error") for d in error.diagnostics]
    return data


@dataclass
class RunReport:
    """A run as a command shows it: the answer on standard output and the rest on standard error, or, with
    ``--json``, one JSON object (:meth:`to_json`). A failed run (``error``) still shows its program and trace."""

    command: str
    program: str | None = None
    trace: Trace | None = None
    task: str | None = None
    text: str | None = None
    agreement: float | None = None
    samples: dict[str, int] | None = None  # drawn, valid
    files: list[Path] = field(default_factory=list)
    result_file: Path | None = None
    timings: dict[str, float | None] = field(default_factory=dict)
    error: VisprogError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and (self.trace is None or self.trace.ok)

    def to_json(self) -> dict[str, Any]:
        trace = self.trace
        return {
            "command": self.command,
            "ok": self.ok,
            "task": self.task,
            "text": self.text,
            "program": self.program,
            "result": json_value(trace.result) if trace is not None and trace.ok else None,
            "result_var": trace.result_var if trace is not None and trace.ok else None,
            "result_file": str(self.result_file) if self.result_file else None,
            "agreement": self.agreement,
            "samples": self.samples,
            "files": [str(p) for p in self.files],
            "timings": self.timings,
            "error": _error_data(self.error) if self.error is not None else None,
            "trace": trace.to_dict() if trace is not None else None,
        }


def show_run(
    report: RunReport,
    args: argparse.Namespace,
    out: TextIO,
    target: OutputTarget | None,
    *,
    label: str | None = None,
    result_label: str | None = None,
    show_program: bool = False,
    warned: bool = False,
    offers_output: bool = True,
) -> None:
    """Write what ``-o`` and ``--trace`` ask for, then print ``report`` (and note ``args.json_shown``).

    ``label``: the text the trace page shows; ``result_label``: the answer's label (default: the result's
    variable); ``warned``: the program's warnings are shown already; ``offers_output``: the command takes ``-o``.
    """
    err, trace = stderr_of(args), report.trace
    quiet, as_json = getattr(args, "quiet", False), getattr(args, "json", False)
    unwritten: VisprogError | None = None  # a file that could not be written: the run is shown all the same
    try:
        if trace is not None and target is not None:
            report.files += write_outputs(trace, target)
            if trace.ok and isinstance(trace.result, Image):
                report.result_file = report.files[-1]
        if trace is not None and getattr(args, "trace", None):
            report.files.append(_save_trace(trace, args.trace, label))
    except VisprogError as e:
        if report.error is None:  # the run went well: writing its files is what failed
            report.error = unwritten = e
        else:  # the run's own error is the one raised; this one is a warning
            print(f"{severity_label('warning', err)} {shown(e)}", file=err)
    args.json_shown = as_json
    if as_json:
        json.dump(report.to_json(), out)
        out.write("\n")
    elif not quiet:
        if report.program and show_program:
            print(f"program:\n{shown(report.program.strip())}\n", file=err)
        if trace is not None:
            print(shown((replace(trace, warnings=[]) if warned else trace).to_text()), file=err)
        if report.samples and report.samples["drawn"] > 1 and report.agreement is not None:
            valid, drawn = report.samples["valid"], report.samples["drawn"]
            print(f"agreement: {report.agreement:.0%} of {valid} valid sample(s) out of {drawn}", file=err)
        for path in report.files:
            print(f"wrote {shown(path, lines=False)}", file=err)
    if unwritten is not None:
        raise unwritten
    if trace is None or not report.ok:
        return
    result = trace.result
    plain = isinstance(result, (str, int, float, bool))
    answer = escape_controls(str(result) if plain else describe_value(result), lines=False)
    if target is not None and target.file is not None and not isinstance(result, Image):
        nothing = f"the result is not an image ({answer}), so nothing was written to {target.file}"
        print(f"{severity_label('warning', err)} {shown(nothing, lines=False)}", file=err)
    elif target is None and offers_output and isinstance(result, Image) and not (quiet or as_json):
        print("the result is an image: -o FILE.png writes it (-o FOLDER: it and every image step)", file=err)
    if quiet and not as_json:
        print(shown(report.result_file, lines=False) if report.result_file else answer, file=out)
    elif not as_json:
        print(f"{shown(result_label or trace.result_var, lines=False)}: {answer}", file=out)
