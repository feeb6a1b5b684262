"""Evaluate the planner and the interpreter on a data set: accuracy, failure kinds, latency, time per module.

Data files (:func:`load_items`):

- our JSONL: one object a line with ``id``, ``image`` (or ``left`` and
  ``right``), ``question`` (or ``statement`` / ``instruction``) and
  ``answer``; image paths are relative to ``images`` (default: the data
  file's folder);
- GQA question JSON as distributed: ``{question_id: {"imageId": ...,
  "question": ..., "answer": ..., ...}}``; the image is
  ``<images>/<imageId>.jpg``;
- NLVR2 JSONL as distributed: ``identifier`` (``dev-850-0-0``), ``sentence``,
  ``label`` (``"True"``/``"False"``), ``left_url``/``right_url``. The pair's
  images are ``<identifier without its last -N>-img0.png`` and ``-img1.png``
  (``dev-850-0-img0.png``; the identifier already starts with the split), looked
  for in ``<images>/`` and then in ``<images>/<directory>/`` (the train split's
  numbered sub-folders); when neither exists the ``left_url``/``right_url`` is
  kept and the item fails to load at run time.

:func:`evaluate` plans every item of a chunk (one LLM call after another),
runs the chunk's valid programs together (``Interpreter.run_many`` when the
interpreter has it, else one :meth:`~visprog.interpreter.Interpreter.run` each
with a shared run cache), and appends one JSON line per item to the output
file, flushed at once; items already in the file are skipped, so a run can be
resumed.

Failure kinds: ``plan_parse`` (the last attempt's program is empty or does
not parse: :func:`visprog.parser.parse` raises), ``plan_check`` (it parses but
fails the check), ``execution`` (an image does not load or every valid
program fails while running), ``wrong_answer``.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TextIO

from visprog.checker import CheckedProgram
from visprog.errors import ConfigError, ProgramError, VisprogError
from visprog.planner.core import Plan, Planner, PlanningError, vote
from visprog.runtime import RunCache
from visprog.trace import Trace

if TYPE_CHECKING:
    from visprog.engines import WorkerSettings

__all__ = [
    "FAILURES",
    "TASK_INPUTS",
    "Item",
    "Summary",
    "evaluate",
    "is_correct",
    "load_items",
    "normalize_answer",
    "process_chunk",
    "summarize",
]

#: The failure kinds an item can have, in the order the summary lists them.
FAILURES = ("plan_parse", "plan_check", "execution", "wrong_answer")

#: The input names each task's programs read.
TASK_INPUTS: dict[str, tuple[str, ...]] = {
    "gqa": ("IMAGE",),
    "nlvr": ("LEFT", "RIGHT"),
    "edit": ("IMAGE",),
    "tag": ("IMAGE",),
}


@dataclass(frozen=True)
class Item:
    """One question, statement or instruction with its images (input name → file path or URL) and answer."""

    id: str
    task: str
    text: str
    images: dict[str, str]
    answer: Any = None


# -- loading -------------------------------------------------------------------


def load_items(path: str | Path, task: str, *, images: str | Path | None = None) -> list[Item]:
    """The items of a data file: our JSONL, GQA question JSON or NLVR2 JSONL (the format is detected).

    ``images`` is the folder image names are relative to (default: the data file's folder).
    """
    if task not in TASK_INPUTS:
        raise ConfigError(f"unknown task '{task}': expected one of {', '.join(TASK_INPUTS)}")
    source = Path(path)
    try:
        text = source.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{source}: cannot read the data file: {e.strerror or e}") from None
    # absolute, so that Ray workers (whose working folder may differ) find the images too
    root = (Path(images) if images is not None else source.parent).absolute()
    whole = _whole_json(text)
    if isinstance(whole, dict) and whole and all(isinstance(v, dict) and "imageId" in v for v in whole.values()):
        return [_gqa_item(str(qid), q, task, root) for qid, q in whole.items()]
    if isinstance(whole, list):
        rows: list[tuple[int, Any]] = list(enumerate(whole, start=1))
    else:
        rows = []
        for number, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    rows.append((number, json.loads(line)))
                except ValueError as e:
                    raise ConfigError(f"{source}:{number}: not a JSON object: {e}") from None
    items: list[Item] = []
    for number, row in rows:
        if not isinstance(row, dict):
            raise ConfigError(f"{source}:{number}: expected a JSON object, got {type(row).__name__}")
        try:
            if "identifier" in row and "sentence" in row:
                items.append(_nlvr2_item(row, task, root))
            else:
                items.append(_our_item(row, task, root))
        except KeyError as e:
            raise ConfigError(f"{source}:{number}: missing key {e}") from None
    seen: set[str] = set()
    for item in items:
        if item.id in seen:
            raise ConfigError(f"{source}: the id '{item.id}' occurs more than once")
        seen.add(item.id)
    return items


def _whole_json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None  # JSONL (or broken: reported line by line)


def _gqa_item(qid: str, q: Mapping[str, Any], task: str, root: Path) -> Item:
    return Item(qid, task, str(q["question"]), {"IMAGE": str(root / f"{q['imageId']}.jpg")}, q.get("answer"))


def _nlvr2_item(row: Mapping[str, Any], task: str, root: Path) -> Item:
    identifier = str(row["identifier"])
    stem = identifier.rsplit("-", 1)[0]
    paths: dict[str, str] = {}
    for name, k, url in (("LEFT", 0, "left_url"), ("RIGHT", 1, "right_url")):
        file = f"{stem}-img{k}.png"
        candidates = [root / file]
        if row.get("directory") is not None:
            candidates.append(root / str(row["directory"]) / file)
        found = next((c for c in candidates if c.is_file()), None)
        paths[name] = str(found if found is not None else row.get(url) or candidates[0])
    return Item(identifier, task, str(row["sentence"]), paths, row.get("label"))


def _our_item(row: Mapping[str, Any], task: str, root: Path) -> Item:
    text = next((row[k] for k in ("question", "statement", "instruction", "text") if k in row), None)
    if text is None:
        raise KeyError("question")
    if "image" in row:
        images = {"IMAGE": row["image"]}
    else:
        images = {"LEFT": row["left"], "RIGHT": row["right"]}
    resolved = {k: str(v) if "://" in str(v) else str(root / str(v)) for k, v in images.items()}
    return Item(str(row["id"]), task, str(text), resolved, row.get("answer"))


# -- answers -------------------------------------------------------------------

_ARTICLES = {"a", "an", "the"}
_NUMBERS = {
    w: str(i)
    for i, w in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
        "sixteen seventeen eighteen nineteen twenty".split()
    )
}
_YES = {"yes", "true", "y"}
_NO = {"no", "false", "n"}
_PUNCTUATION = set("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")


def normalize_answer(value: Any) -> str:
    """A VQA-style normal form: lower case, no punctuation or articles, number words as digits, yes/no for booleans.

    ``True``, ``'True'``, ``'true'`` and ``'yes'`` all become ``'yes'``; ``False``/``'False'``/``'no'`` ``'no'``.
    """
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, (list, tuple)):
        return " ".join(normalize_answer(v) for v in value)
    text = str(value).lower().strip()
    chars = []
    for i, c in enumerate(text):
        # keep a decimal point between digits (2.5), a comma in 1,000 is dropped
        if c == "." and 0 < i < len(text) - 1 and text[i - 1].isdigit() and text[i + 1].isdigit():
            chars.append(c)
        elif c == ",":
            chars.append("" if 0 < i < len(text) - 1 and text[i - 1].isdigit() and text[i + 1].isdigit() else " ")
        elif c in _PUNCTUATION:
            chars.append(" " if c in "-/" else "")
        else:
            chars.append(c)
    words = [_NUMBERS.get(w, w) for w in "".join(chars).split() if w not in _ARTICLES]
    out = " ".join(words)
    if out in _YES:
        return "yes"
    if out in _NO:
        return "no"
    return out


def is_correct(answer: Any, expected: Any) -> bool:
    """Whether ``answer`` matches ``expected`` after :func:`normalize_answer` (a list: any of them)."""
    if isinstance(expected, list):
        return any(is_correct(answer, e) for e in expected)
    return normalize_answer(answer) == normalize_answer(expected)


def _is_image(value: Any) -> bool:
    from PIL import Image as PILImage

    return isinstance(value, PILImage.Image)


def _json_safe(value: Any) -> Any:
    from PIL import Image as PILImage

    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, PILImage.Image):
        return f"<image {value.width}x{value.height}>"
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    from visprog.types import describe_value

    return describe_value(value)


# -- summary -------------------------------------------------------------------


@dataclass
class Summary:
    """What an evaluation found, over every item of the data set that has a record in the output file."""

    n: int
    correct: int
    accuracy: float  # over the scored items (those with an expected answer)
    failures: dict[str, int]
    latency: dict[str, float]  # p50, p90, p99 in seconds
    module_seconds: dict[str, float]
    out_path: str = ""
    skipped: int = 0  # items found in the output file and not run again
    extra: dict[str, Any] = field(default_factory=dict)
    scored: int = -1  # items with an expected answer (-1: all of them)
    ran: int = -1  # items whose program ran to its end (no failure before the answer; -1: unknown)

    def __post_init__(self) -> None:
        if self.scored < 0:
            self.scored = self.n
        if self.ran < 0:
            self.ran = self.n - sum(v for k, v in self.failures.items() if k != "wrong_answer")

    @property
    def failure_rates(self) -> dict[str, float]:
        return {k: (v / self.n if self.n else 0.0) for k, v in self.failures.items()}

    def to_dict(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "scored": self.scored,
            "correct": self.correct,
            "accuracy": self.accuracy,
            "ran": self.ran,
            "failures": dict(self.failures),
            "failure_rates": self.failure_rates,
            "latency": dict(self.latency),
            "module_seconds": dict(self.module_seconds),
            "out_path": self.out_path,
            "skipped": self.skipped,
        }

    def to_table(self) -> str:
        rows = [("items", str(self.n))]
        if self.scored:
            rows.append(("accuracy", f"{self.accuracy:.1%} ({self.correct}/{self.scored})"))
        if self.scored < self.n:
            rows.append(("without an answer", f"{self.n - self.scored} (not scored)"))
        rows.append(("ran to the end", f"{self.ran / self.n if self.n else 0.0:.1%} ({self.ran})"))
        for kind in FAILURES:
            rows.append((kind, f"{self.failure_rates[kind]:.1%} ({self.failures[kind]})"))
        for p in ("p50", "p90", "p99"):
            rows.append((f"latency {p}", f"{self.latency[p] * 1000:.1f} ms"))
        for name, seconds in sorted(self.module_seconds.items(), key=lambda kv: -kv[1]):
            rows.append((f"time in {name}", f"{seconds:.3f} s"))
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def _percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default); 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def summarize(records: Iterable[Mapping[str, Any]], *, out_path: str = "", skipped: int = 0) -> Summary:
    """The :class:`Summary` of output records (one per item)."""
    recs = list(records)
    failures = {k: sum(1 for r in recs if r.get("failure") == k) for k in FAILURES}
    correct = sum(1 for r in recs if r.get("correct") is True)
    modules: dict[str, float] = {}
    for r in recs:
        for name, s in (r.get("timings") or {}).items():
            modules[name] = modules.get(name, 0.0) + float(s)
    seconds = [float(r.get("seconds") or 0.0) for r in recs]
    latency = {f"p{int(q * 100)}": _percentile(seconds, q) for q in (0.5, 0.9, 0.99)}
    n = len(recs)
    scored = sum(1 for r in recs if r.get("expected") is not None)
    ran = n - sum(v for k, v in failures.items() if k != "wrong_answer")
    accuracy = correct / scored if scored else 0.0
    return Summary(n, correct, accuracy, failures, latency, modules, out_path, skipped, scored=scored, ran=ran)


# -- evaluation ------------------------------------------------------------------


class _Runner(Protocol):
    def run(self, program: Any, inputs: Mapping[str, Any], *, cache: RunCache | None = None) -> Trace: ...


def _read_records(path: Path) -> dict[str, dict[str, Any]]:
    """The records already in the output file by id (a line cut short by a crash is ignored)."""
    out: dict[str, dict[str, Any]] = {}
    if not path.is_file():
        return out
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and "id" in rec:
            out[str(rec["id"])] = rec
    return out


def _plan_failure(error: PlanningError) -> str:
    """``plan_parse`` when the last attempt's program is empty or does not parse, else ``plan_check``."""
    from visprog.parser import parse

    last = error.attempts[-1] if error.attempts else None
    if last is None or not last.program.strip():
        return "plan_parse"
    try:
        parse(last.program)
    except ProgramError:
        return "plan_parse"
    return "plan_check"


class _Progress:
    """A one-line progress bar on stderr: items done and the running accuracy."""

    def __init__(self, total: int, enabled: bool, stream: TextIO | None = None) -> None:
        self.total = total
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.done = 0
        self.correct = 0
        self.scored = 0

    def update(self, correct: bool | None) -> None:
        self.done += 1
        self.correct += correct is True
        self.scored += correct is not None
        if not self.enabled:
            return
        width = 24
        filled = width * self.done // max(self.total, 1)
        bar = "#" * filled + "." * (width - filled)
        acc = f"accuracy {self.correct / self.scored:.1%}" if self.scored else "not scored"
        self.stream.write(f"\reval [{bar}] {self.done}/{self.total}  {acc}")
        if self.done >= self.total:
            self.stream.write("\n")
        self.stream.flush()


@dataclass
class _Pending:
    item: Item
    plans: list[Plan | PlanningError] = field(default_factory=list)
    inputs: dict[str, Any] | None = None
    load_error: str | None = None
    plan_seconds: float = 0.0
    results: list[Trace | VisprogError] = field(default_factory=list)


def _run_jobs(
    interpreter: _Runner, jobs: Sequence[tuple[CheckedProgram, Mapping[str, Any]]]
) -> list[Trace | VisprogError]:
    if not jobs:
        return []
    run_many = getattr(interpreter, "run_many", None)
    if run_many is not None:
        return list(run_many(jobs))
    cache = RunCache()
    out: list[Trace | VisprogError] = []
    for program, inputs in jobs:
        try:
            out.append(interpreter.run(program, inputs, cache=cache))
        except VisprogError as e:
            out.append(e)
    return out


def evaluate(
    items: Sequence[Item],
    planner: Planner,
    interpreter: _Runner,
    *,
    out_path: str | Path,
    samples: int = 1,
    temperature: float | None = None,
    progress: bool = True,
    batch_size: int = 16,
    max_pixels: int | None = None,
    out: TextIO | None = None,
    engine: str = "local",
    address: str | None = None,
    workers: int | None = None,
    settings: WorkerSettings | None = None,
    outputs: str | Path | None = None,
    traces: str | Path | None = None,
    all_traces: bool = False,
) -> Summary:
    """Plan and run every item not yet in ``out_path``, append one JSON line each, return the :class:`Summary`.

    With ``samples`` > 1 every item gets that many plans (temperature 0.7 unless
    given); the valid ones run and the answers are voted on as
    :meth:`Planner.solve` does.

    ``engine="ray"`` spreads the chunks over Ray actors (one per GPU, else
    ``workers`` CPU actors, default 2; ``address``: an existing cluster), each
    building its own planner and interpreter from ``settings`` (a
    :class:`visprog.engines.WorkerSettings`; ``planner`` and ``interpreter`` are
    then not used); the records and the summary are the same. The summary covers every item of ``items`` with a
    record in the file, is printed as a table (to ``out``; stdout when
    ``progress``), and saved as ``<stem>.summary.json`` next to ``out_path``.

    Answers that are images (edit and tag) are saved under ``outputs`` (default: the folder
    ``<stem>.outputs`` next to ``out_path``, made on the first image) and named in the record's
    ``output_file``. Items without an expected answer are not scored: accuracy is over the scored
    items, and the summary also counts the items whose program ran to its end.

    With ``traces`` (a folder), the trace page (:meth:`Trace.save_html`) of every item whose
    program ran but came out wrong or failed is saved as ``<traces>/<id>.html`` (the record's
    ``trace_file``); ``all_traces``: of every item that ran.
    """
    if samples < 1:
        raise ValueError(f"samples must be at least 1, got {samples}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if engine not in ("local", "ray"):
        raise ConfigError(f"unknown engine '{engine}': expected local or ray")
    if engine == "ray" and settings is None:
        raise ConfigError("engine 'ray' needs worker settings (visprog.engines.WorkerSettings)")
    if samples > 1 and temperature is None:
        temperature = 0.7
    path = Path(out_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    done = _read_records(path)
    todo = [it for it in items if it.id not in done]
    skipped = len(items) - len(todo)
    bar = _Progress(len(items), progress)
    for it in items:
        if it.id in done:
            bar.done += 1
            bar.correct += done[it.id].get("correct") is True
            bar.scored += done[it.id].get("correct") is not None
    if path.is_file() and path.stat().st_size and not path.read_bytes().endswith(b"\n"):
        with path.open("a", encoding="utf-8") as f:
            f.write("\n")  # a line cut short by a crash stays on its own
    chunks = [todo[start : start + batch_size] for start in range(0, len(todo), batch_size)]
    options: dict[str, Any] = {
        "samples": samples,
        "temperature": temperature,
        "max_pixels": max_pixels,
        "outputs": Path(outputs) if outputs is not None else path.with_name(f"{path.stem}.outputs"),
        "traces": Path(traces) if traces is not None else None,
        "all_traces": all_traces,
    }
    results: Iterable[list[dict[str, Any]]]
    if engine == "ray" and chunks:
        from visprog.engines import ray_chunks

        assert settings is not None
        results = ray_chunks(chunks, settings, address=address, workers=workers, **options)
    else:
        results = (process_chunk(c, planner, interpreter, **options) for c in chunks)
    with path.open("a", encoding="utf-8") as f:
        for records in results:  # chunk by chunk, in item order
            for rec in records:
                f.write(json.dumps(rec) + "\n")
                f.flush()
                done[rec["id"]] = rec
                bar.update(rec["correct"])
    summary = summarize([done[it.id] for it in items if it.id in done], out_path=str(path), skipped=skipped)
    path.with_name(f"{path.stem}.summary.json").write_text(json.dumps(summary.to_dict(), indent=2) + "\n")
    stream = out if out is not None else (sys.stdout if progress else None)
    if stream is not None:
        print(summary.to_table(), file=stream)
    return summary


def process_chunk(
    chunk: Sequence[Item],
    planner: Planner,
    interpreter: _Runner,
    *,
    samples: int = 1,
    temperature: float | None = None,
    max_pixels: int | None = None,
    outputs: str | Path | None = None,
    traces: str | Path | None = None,
    all_traces: bool = False,
) -> list[dict[str, Any]]:
    """One output record per item of ``chunk``, in order: plan every item, then run the valid programs together.

    An answer that is an image (edit and tag programs) is saved as ``<outputs>/<id>.png`` (the record's
    ``output_file``) when ``outputs`` is given; trace pages go to ``traces`` as :func:`evaluate` says.
    The unit of work of both engines (a Ray actor calls it with its own planner and interpreter).
    """
    from visprog.images import load_image

    pending = [_Pending(it) for it in chunk]
    for p in pending:  # plan every item first: LLM calls one after another
        try:
            p.inputs = {name: load_image(src, max_pixels=max_pixels, name=src) for name, src in p.item.images.items()}
        except (VisprogError, OSError, ValueError) as e:
            p.load_error = f"{type(e).__name__}: {e}" if not isinstance(e, VisprogError) else str(e)
            continue
        t0 = time.perf_counter()
        for k in range(samples):
            try:
                p.plans.append(planner.plan(p.item.task, p.item.text, sample=k, temperature=temperature))
            except PlanningError as e:
                p.plans.append(e)
        p.plan_seconds = time.perf_counter() - t0
    jobs: list[tuple[CheckedProgram, Mapping[str, Any]]] = []
    owners: list[_Pending] = []
    for p in pending:
        for plan in p.plans:
            if isinstance(plan, Plan) and p.inputs is not None:
                jobs.append((plan.checked, p.inputs))
                owners.append(p)
    for p, result in zip(owners, _run_jobs(interpreter, jobs), strict=True):
        p.results.append(result)
    folder = Path(outputs) if outputs is not None else None
    pages = Path(traces) if traces is not None else None
    return [_record(p, folder, pages, all_traces) for p in pending]


def output_file(folder: Path, item_id: str, suffix: str = ".png") -> Path:
    """Where an item's image answer (or trace page) is saved: its id made safe as a file name.

    A short hash of the id keeps ids apart that differ only in the characters replaced.
    """
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", item_id).lstrip(".") or "item"
    if safe != item_id:
        safe += "-" + hashlib.sha1(item_id.encode("utf-8")).hexdigest()[:8]
    return folder / f"{safe}{suffix}"


def _record(
    p: _Pending, outputs: Path | None = None, trace_pages: Path | None = None, all_traces: bool = False
) -> dict[str, Any]:
    item = p.item
    valid = [plan for plan in p.plans if isinstance(plan, Plan)]
    traces = [r for r in p.results if isinstance(r, Trace)]
    run_traces = [r if isinstance(r, Trace) else getattr(r, "trace", None) for r in p.results]
    timings: dict[str, float] = {}
    for t in run_traces:
        if isinstance(t, Trace):
            for name, s in t.seconds_by_module().items():
                timings[name] = timings.get(name, 0.0) + s
    answer: Any = None
    program: str | None = None
    failure: str | None = None
    error: str | None = None
    agreement: float | None = None
    shown: Trace | None = None  # the run the trace page shows
    if p.load_error is not None:
        failure, error = "execution", p.load_error
    elif not valid:
        last = p.plans[-1]
        assert isinstance(last, PlanningError)
        failure, error = _plan_failure(last), str(last)
    elif not traces:
        failure = "execution"
        error = str(p.results[-1]) if p.results else "no program ran"
        program = valid[-1].program
        shown = next((t for t in reversed(run_traces) if isinstance(t, Trace)), None)
    else:
        answer, agreement = vote([t.result for t in traces])
        winner = next(t for t in traces if t.result is answer)
        program = winner.source
        shown = winner
    saved: str | None = None
    if outputs is not None and failure is None and _is_image(answer):
        file = output_file(outputs, item.id)
        try:
            file.parent.mkdir(parents=True, exist_ok=True)
            answer.save(file)
            saved = str(file)
        except OSError as e:
            error = f"the answer image could not be saved to {file}: {e.strerror or e}"
    correct: bool | None = None
    if failure is None and item.answer is not None:
        correct = is_correct(answer, item.answer)
        failure = None if correct else "wrong_answer"
    elif failure is not None and item.answer is not None:
        correct = False
    page: str | None = None
    if trace_pages is not None and shown is not None and (all_traces or failure is not None):
        file = output_file(trace_pages, item.id, ".html")
        try:
            page = str(shown.save_html(file, title=item.id, text=item.text))
        except OSError as e:
            error = f"{error}; " if error else ""
            error += f"the trace page could not be saved to {file}: {e.strerror or e}"
    return {
        "id": item.id,
        "task": item.task,
        "text": item.text,
        "program": program,
        "programs": [plan.program if isinstance(plan, Plan) else None for plan in p.plans],
        "answer": _json_safe(answer),
        "expected": _json_safe(item.answer),
        "correct": correct,
        "failure": failure,
        "error": error,
        "agreement": agreement,
        "output_file": saved,
        "trace_file": page,
        "timings": timings,
        "seconds": p.plan_seconds + sum(timings.values()),
    }
