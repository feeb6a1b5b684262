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
interpreter has it, else one :meth:`~visprog.running.interpreter.Interpreter.run` each
with a shared run cache), and appends one JSON line per item to the output
file, flushed at once; items already in the file are skipped, so a run can be
resumed.

Every item must have the images its task reads (:data:`TASK_INPUTS`), checked
as the file is loaded.

Failure kinds: ``plan_parse`` (the last attempt's program is empty or does
not parse: :func:`visprog.language.parser.parse` raises; or the LLM refused the request,
a ``per_request`` :class:`~visprog.errors.ServiceError`, and no program came
back), ``plan_check`` (it parses but fails the check), ``execution`` (an image
does not load or every valid program fails while running), ``wrong_answer``.

Latency: a record's ``seconds`` is ``load_seconds`` (its images) +
``plan_seconds`` (its LLM calls) + ``run_seconds`` (the wall time from the start
of its chunk's run until its program, or the last of its samples, finished:
the programs of a chunk run together); ``timings`` has each module's own time.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TextIO

from visprog.errors import ConfigError, ProgramError, ServiceError, VisprogError
from visprog.language.checker import CheckedProgram
from visprog.planner.core import Plan, Planner, PlanningError, vote
from visprog.running.runtime import RunCache
from visprog.running.trace import Trace

if TYPE_CHECKING:
    from visprog.evaluation.engines import WorkerSettings

__all__ = [
    "ABORTED",
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

    ``images`` is the folder image names are relative to (default: the data file's folder). Every
    item must have the images ``task`` reads (:data:`TASK_INPUTS`: one image for gqa, edit and tag,
    a left and a right one for nlvr): the first item that does not is a :class:`ConfigError`, as is
    a file with no items.
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
    if isinstance(whole, dict) and not whole:
        raise ConfigError(f"{source}: the file has no items (an empty JSON object)")
    if isinstance(whole, dict) and _looks_like_gqa(whole):
        return [_checked(_gqa_item(source, str(qid), q, task, root), task, f"{source}") for qid, q in whole.items()]
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
    if not rows:
        raise ConfigError(f"{source}: the file has no items")
    items: list[Item] = []
    for number, row in rows:
        if not isinstance(row, dict):
            raise ConfigError(f"{source}:{number}: expected a JSON object, got {type(row).__name__}")
        try:
            if "identifier" in row and "sentence" in row:
                item = _nlvr2_item(row, task, root)
            else:
                item = _our_item(row, task, root)
        except KeyError as e:
            raise ConfigError(f"{source}:{number}: missing key {e}") from None
        items.append(_checked(item, task, f"{source}:{number}"))
    seen: set[str] = set()
    for item in items:
        if item.id in seen:
            raise ConfigError(f"{source}: the id '{item.id}' occurs more than once")
        seen.add(item.id)
    return items


#: Keys of one item of our JSONL or NLVR2: a JSON object with one of them is a row, not a GQA file.
_ROW_KEYS = frozenset({"id", "identifier", "question", "statement", "instruction", "text", "image", "left", "right"})


def _looks_like_gqa(whole: Mapping[str, Any]) -> bool:
    """Whether a JSON object is a GQA question file (question id → entry), not a one-line JSONL row."""
    return not (_ROW_KEYS & set(whole)) and any(isinstance(v, dict) for v in whole.values())


def _describe_images(names: Iterable[str]) -> str:
    given = set(names)
    if given == {"IMAGE"}:
        return "one image"
    if given == {"LEFT", "RIGHT"}:
        return "left and right images"
    return "the images " + ", ".join(sorted(given)) if given else "no image"


#: How our JSONL names each task's images.
_IMAGE_KEYS = {("IMAGE",): "key 'image'", ("LEFT", "RIGHT"): "keys 'left' and 'right'"}


def _checked(item: Item, task: str, where: str) -> Item:
    """``item``, when it has exactly the images ``task``'s programs read (else a :class:`ConfigError`)."""
    wanted = TASK_INPUTS[task]
    if set(item.images) != set(wanted):
        keys = _IMAGE_KEYS.get(wanted)
        raise ConfigError(
            f"{where}: item '{item.id}' has {_describe_images(item.images)} but task {task} needs "
            f"{_describe_images(wanted)}{f' ({keys})' if keys else ''}: is --task right for this file?"
        )
    return item


def _whole_json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None  # JSONL (or broken: reported line by line)


def _gqa_item(source: Path, qid: str, q: Any, task: str, root: Path) -> Item:
    if not isinstance(q, dict):
        raise ConfigError(
            f"{source}: looks like a GQA question file (question id → entry), "
            f"but entry '{qid}' is a {type(q).__name__}, not an object"
        )
    missing = [k for k in ("imageId", "question") if k not in q]
    if missing:
        raise ConfigError(
            f"{source}: looks like a GQA question file (question id → entry), "
            f"but entry '{qid}' lacks {' and '.join(repr(k) for k in missing)}"
        )
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
_YES = {"yes", "true"}
_NO = {"no", "false"}
_PUNCTUATION = set("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def _number(text: str) -> str:
    """A decimal number written by its value: ``2.50`` → ``2.5``, ``1.0`` → ``1``, ``007`` → ``7``."""
    from decimal import Decimal

    value = Decimal(text).normalize()
    out = format(value, "f")
    return "0" if out in ("-0", "0") else out


def normalize_answer(value: Any) -> str:
    """A VQA-style normal form: lower case, no punctuation or articles, number words as digits, yes/no for booleans.

    ``True``, ``'True'``, ``'true'`` and ``'yes'`` all become ``'yes'``; ``False``/``'False'``/``'no'`` ``'no'``
    (single letters such as ``'y'`` stay themselves). Numbers are written by their value, so they compare
    by value: ``'2.50'``, ``2.5`` and ``'2.5'`` are ``'2.5'``; ``'1.0'``, ``1.0`` and ``'one'`` are ``'1'``;
    ``'1,000'`` is ``'1000'``.
    """
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return _number(repr(value)) if math.isfinite(value) else str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, (list, tuple)):
        return " ".join(normalize_answer(v) for v in value)
    text = str(value).lower().strip()
    chars = []
    for i, c in enumerate(text):
        between_digits = 0 < i < len(text) - 1 and text[i - 1].isdigit() and text[i + 1].isdigit()
        # keep a decimal point between digits (2.5) and a minus sign before a number; a comma in 1,000 is dropped
        if c == "." and between_digits:
            chars.append(c)
        elif c == "-" and i + 1 < len(text) and text[i + 1].isdigit() and (i == 0 or text[i - 1].isspace()):
            chars.append(c)
        elif c == ",":
            chars.append("" if between_digits else " ")
        elif c in _PUNCTUATION:
            chars.append(" " if c in "-/" else "")
        else:
            chars.append(c)
    words = [_NUMBERS.get(w, w) for w in "".join(chars).split() if w not in _ARTICLES]
    out = " ".join(_number(w) if _NUMBER.fullmatch(w) else w for w in words)
    if out in _YES:
        return "yes"
    if out in _NO:
        return "no"
    return out


def is_correct(answer: Any, expected: Any) -> bool:
    """Whether ``answer`` matches ``expected`` after :func:`normalize_answer`.

    An ``expected`` list holds alternatives, VQA-style: the answer is correct when it matches any
    one of them (``["gray", "grey"]``); it is not compared with the list as a whole.
    """
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
    from visprog.language.values import describe_value

    return describe_value(value)


# -- summary -------------------------------------------------------------------


@dataclass
class Summary:
    """What an evaluation found, over every item of the data set that has a record in the output file."""

    n: int
    correct: int
    accuracy: float  # over the scored items (those with an expected answer)
    failures: dict[str, int]
    latency: dict[str, float]  # p50, p90, p99 of the records' seconds (load + plan + run), in seconds
    module_seconds: dict[str, float]
    out_path: str = ""
    skipped: int = 0  # items found in the output file and not run again
    extra: dict[str, Any] = field(default_factory=dict)
    scored: int = -1  # items with an expected answer (-1: all of them)
    ran: int = -1  # items whose program ran to its end (no failure before the answer; -1: unknown)
    wall_seconds: float = 0.0  # the wall time of this invocation of evaluate
    evaluated: int = 0  # the items this invocation planned and ran (n less those found in the file)

    def __post_init__(self) -> None:
        if self.scored < 0:
            self.scored = self.n
        if self.ran < 0:
            self.ran = self.n - sum(v for k, v in self.failures.items() if k != "wrong_answer")

    @property
    def items_per_second(self) -> float:
        """This invocation's throughput: the items it evaluated over its wall time."""
        return self.evaluated / self.wall_seconds if self.wall_seconds > 0 else 0.0

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
            "evaluated": self.evaluated,
            "wall_seconds": self.wall_seconds,
            "items_per_second": self.items_per_second,
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
        rows.append(("wall time", f"{self.wall_seconds:.1f} s for the {self.evaluated} item(s) evaluated now"))
        rows.append(("throughput", f"{self.items_per_second:.2f} items/s"))
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


def _ends_a_line(path: Path) -> bool:
    """Whether the file is missing, empty or ends with a newline (its last byte only is read)."""
    if not path.is_file() or not path.stat().st_size:
        return True
    with path.open("rb") as f:
        f.seek(-1, 2)
        return f.read(1) == b"\n"


def _plan_failure(error: PlanningError) -> str:
    """``plan_parse`` when the last attempt's program is empty or does not parse, else ``plan_check``."""
    from visprog.language.parser import parse

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


#: The key of the mark :func:`process_chunk` puts in place of the record of the item at which the LLM
#: service stopped answering: ``{"id": ..., ABORTED: "the error"}``. :func:`evaluate` writes the records
#: before it, not the mark, and stops with a :class:`ServiceError`.
ABORTED = "_aborted"


@dataclass
class _Pending:
    item: Item
    plans: list[Plan | PlanningError | ServiceError] = field(default_factory=list)
    inputs: dict[str, Any] | None = None
    load_error: str | None = None
    load_seconds: float = 0.0
    plan_seconds: float = 0.0
    run_seconds: float = 0.0
    results: list[Trace | VisprogError] = field(default_factory=list)


def _run_jobs(
    interpreter: _Runner, jobs: Sequence[tuple[CheckedProgram, Mapping[str, Any]]]
) -> list[tuple[Trace | VisprogError, float]]:
    """Each job's result and when it finished: seconds from the start of the run of all of them."""
    if not jobs:
        return []
    start = time.perf_counter()
    run_many = getattr(interpreter, "run_many", None)
    if run_many is not None:
        results = list(run_many(jobs))
        total = time.perf_counter() - start
        return [(r, _finished(r, total)) for r in results]
    cache = RunCache()
    out: list[tuple[Trace | VisprogError, float]] = []
    for program, inputs in jobs:
        result: Trace | VisprogError
        try:
            result = interpreter.run(program, inputs, cache=cache)
        except VisprogError as e:
            result = e
        out.append((result, time.perf_counter() - start))
    return out


def _finished(result: Trace | VisprogError, total: float) -> float:
    """When a job of ``run_many`` finished: its trace's seconds (from the start of the run of all the jobs)."""
    trace = result if isinstance(result, Trace) else getattr(result, "trace", None)
    if not isinstance(trace, Trace):
        return 0.0  # never started (it failed its check)
    return trace.seconds if trace.seconds > 0 or not isinstance(result, Trace) else total


def _missing_images(items: Sequence[Item]) -> tuple[int, str | None]:
    """How many items lack a local image file, and the first missing path (URLs are not checked).

    One stat call per distinct path: GQA's questions share a few images each.
    """
    found: dict[str, bool] = {}
    missing, first = 0, None
    for item in items:
        lacking = None
        for src in item.images.values():
            if "://" in src:
                continue
            if src not in found:
                found[src] = os.path.isfile(src)
            if not found[src]:
                lacking = src
                break
        if lacking is not None:
            missing += 1
            first = first or lacking
    return missing, first


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
    plan_workers: int = 1,
) -> Summary:
    """Plan and run every item not yet in ``out_path``, append one JSON line each, return the :class:`Summary`.

    With ``samples`` > 1 every item gets that many plans (temperature 0.7 unless
    given); the valid ones run and the answers are voted on as
    :meth:`Planner.solve` does. ``plan_workers`` > 1 sends that many items' LLM requests at once
    (an LLM server only); the records do not change.

    ``engine="ray"`` spreads the chunks over Ray actors (one per GPU, else
    ``workers`` CPU actors, default 2; ``address``: an existing cluster), each
    building its own planner and interpreter from ``settings`` (a
    :class:`visprog.evaluation.engines.WorkerSettings`; ``planner`` and ``interpreter`` are
    then not used); the records and the summary are the same. The summary covers every item of ``items`` with a
    record in the file, is printed as a table (to ``out``; stdout when
    ``progress``), and saved as ``<stem>.summary.json`` next to ``out_path``.

    Before planning anything, the local image files of the items to run are looked for (one stat
    call per file; URLs are not): when none of the items has its images this is a
    :class:`ConfigError` (the wrong image folder, most likely); when some lack theirs, one warning
    line goes to stderr and those items are recorded as ``execution`` failures.

    When the LLM service stops answering (unreachable, timed out, key or model refused, rate limited
    after the retries, server errors: a :class:`ServiceError` that is not ``per_request``), the items
    of the chunk planned before it are run and written, and the evaluation stops with a
    :class:`ServiceError` saying so: the items without a record are planned when the same call (or
    command) runs again. A refusal of one request (``per_request``: its prompt is too long, a content
    filter) is that item's ``plan_parse`` failure.

    Answers that are images (edit and tag) are saved under ``outputs`` (default: the folder
    ``<stem>.outputs`` next to ``out_path``, made on the first image) and named in the record's
    ``output_file``. Items without an expected answer are not scored: accuracy is over the scored
    items, and the summary also counts the items whose program ran to its end.

    With ``traces`` (a folder), the trace page (:meth:`Trace.save_html`) of every item whose
    program ran but came out wrong or failed is saved as ``<traces>/<id>.html`` (the record's
    ``trace_file``); ``all_traces``: of every item that ran.
    """
    started = time.perf_counter()
    if samples < 1:
        raise ValueError(f"samples must be at least 1, got {samples}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if engine not in ("local", "ray"):
        raise ConfigError(f"unknown engine '{engine}': expected local or ray")
    if engine == "ray" and settings is None:
        raise ConfigError("engine 'ray' needs worker settings (visprog.evaluation.engines.WorkerSettings)")
    if plan_workers < 1:
        raise ConfigError(f"plan_workers must be at least 1, got {plan_workers}")
    local_model = (
        bool(settings.planner.get("local"))
        if engine == "ray" and settings is not None
        else _is_local_model(getattr(planner, "backend", None))
    )
    if plan_workers > 1 and local_model:
        raise ConfigError("planning several items at once needs an LLM server: a local model plans one at a time")
    if samples > 1 and temperature is None:
        temperature = 0.7
    path = Path(out_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    done = _read_records(path)
    for it in items:  # resuming skips by id: a record of another task with the same id is not this item's
        other = done.get(it.id, {}).get("task")
        if other is not None and other != it.task:
            raise ConfigError(
                f"{path} already has a record for '{it.id}' from task {other}, not {it.task}: "
                "write this evaluation to another file (-o)"
            )
    todo = [it for it in items if it.id not in done]
    skipped = len(items) - len(todo)
    missing, first_missing = _missing_images(todo)
    if todo and missing == len(todo):
        what = (
            "the item's image was not found:"
            if len(todo) == 1
            else f"none of the {len(todo)} items' images were found, e.g."
        )
        raise ConfigError(f"{what} {first_missing}; pass --images DIR, the folder with the images")
    if missing:
        print(
            f"warning: {missing} of the {len(todo)} items to evaluate lack their images (e.g. {first_missing}); "
            "they are recorded as execution failures",
            file=sys.stderr,
        )
    bar = _Progress(len(items), progress)
    for it in items:
        if it.id in done:
            bar.done += 1
            bar.correct += done[it.id].get("correct") is True
            bar.scored += done[it.id].get("correct") is not None
    if not _ends_a_line(path):
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
        "plan_workers": plan_workers,
    }
    results: Iterator[list[dict[str, Any]]]
    if engine == "ray" and chunks:
        from visprog.evaluation.engines import ray_chunks

        assert settings is not None
        results = ray_chunks(chunks, settings, address=address, workers=workers, **options)
    else:
        results = (process_chunk(c, planner, interpreter, **options) for c in chunks)
    written = 0
    aborted: dict[str, Any] | None = None
    try:
        with path.open("a", encoding="utf-8") as f:
            for records in results:  # chunk by chunk, in item order
                for rec in records:
                    if ABORTED in rec:
                        aborted = rec
                        continue
                    f.write(json.dumps(rec) + "\n")
                    f.flush()
                    done[rec["id"]] = rec
                    written += 1
                    bar.update(rec["correct"])
                if aborted is not None:
                    break
    finally:
        close = getattr(results, "close", None)
        if close is not None:
            close()  # stops the Ray actors at once when the loop ended early
    summary = summarize([done[it.id] for it in items if it.id in done], out_path=str(path), skipped=skipped)
    summary.wall_seconds = time.perf_counter() - started
    summary.evaluated = written
    path.with_name(f"{path.stem}.summary.json").write_text(json.dumps(summary.to_dict(), indent=2) + "\n")
    if aborted is not None:  # the summary so far is saved; the run stops here
        if bar.enabled and 0 < bar.done < bar.total:
            bar.stream.write("\n")
        left = len(items) - len(done)
        raise ServiceError(
            f"the LLM stopped answering at item '{aborted['id']}': {aborted[ABORTED]}\n"
            f"the records so far ({len(done)}, {written} of them written now) are saved in {path}; "
            f"{left} item(s) have none yet: run the same command again to resume"
        )
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
    plan_workers: int = 1,
) -> list[dict[str, Any]]:
    """One output record per item of ``chunk``, in order: plan every item, then run the valid programs together.

    ``plan_workers`` > 1 plans that many items at once (threads sending LLM requests side by side;
    for an LLM server, not a local model). The records are the same, in item order.

    An answer that is an image (edit and tag programs) is saved as ``<outputs>/<id>.png`` (the record's
    ``output_file``) when ``outputs`` is given; trace pages go to ``traces`` as :func:`evaluate` says.
    The unit of work of both engines (a Ray actor calls it with its own planner and interpreter).

    When the planner's LLM service fails (a :class:`ServiceError` that is not ``per_request``),
    planning stops there: the items planned before it are run and get their records, the item it
    failed on gets the mark ``{"id": ..., ABORTED: "the error"}`` instead (see :data:`ABORTED`), and
    the items after it get nothing. A ``per_request`` error is the item's ``plan_parse`` failure.
    """
    from visprog.running.images import load_image

    if plan_workers < 1:
        raise ValueError(f"plan_workers must be at least 1, got {plan_workers}")
    if _is_local_model(getattr(planner, "backend", None)):
        plan_workers = 1  # a model in this process generates one reply at a time

    def prepare(p: _Pending) -> ServiceError | None:
        """Load the item's images and plan it; the outage that stopped it, if any."""
        t0 = time.perf_counter()
        try:
            p.inputs = {name: load_image(src, max_pixels=max_pixels, name=src) for name, src in p.item.images.items()}
        except (VisprogError, OSError, ValueError) as e:
            p.load_error = f"{type(e).__name__}: {e}" if not isinstance(e, VisprogError) else str(e)
            return None
        finally:
            p.load_seconds = time.perf_counter() - t0
        t0 = time.perf_counter()
        try:
            for k in range(samples):
                try:
                    p.plans.append(planner.plan(p.item.task, p.item.text, sample=k, temperature=temperature))
                except PlanningError as e:
                    p.plans.append(e)
                except ServiceError as e:
                    if not e.per_request:
                        return e
                    p.plans.append(e)  # this request was refused: every sample's would be
                    break
        finally:
            p.plan_seconds = time.perf_counter() - t0
        return None

    pending = [_Pending(it) for it in chunk]
    stop: tuple[_Pending, ServiceError] | None = None
    if plan_workers == 1:  # one LLM call after another; an outage stops at once
        for p in pending:
            if (error := prepare(p)) is not None:
                stop = (p, error)
                break
    else:  # up to plan_workers items planned at once; an outage stops at the first item it hit, in order
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=plan_workers, thread_name_prefix="visprog-plan") as pool:
            errors = list(pool.map(prepare, pending))
        stop = next(((p, e) for p, e in zip(pending, errors, strict=True) if e is not None), None)
    if stop is None:
        stop = _refused_alike(pending)
    planned = pending[: pending.index(stop[0])] if stop is not None else pending
    jobs: list[tuple[CheckedProgram, Mapping[str, Any]]] = []
    owners: list[_Pending] = []
    for p in planned:
        for plan in p.plans:
            if isinstance(plan, Plan) and p.inputs is not None:
                jobs.append((plan.checked, p.inputs))
                owners.append(p)
    for p, (result, finished) in zip(owners, _run_jobs(interpreter, jobs), strict=True):
        p.results.append(result)
        p.run_seconds = max(p.run_seconds, finished)
    folder = Path(outputs) if outputs is not None else None
    pages = Path(traces) if traces is not None else None
    records = [_record(p, folder, pages, all_traces) for p in planned]
    if stop is not None:
        records.append({"id": stop[0].item.id, ABORTED: str(stop[1])})
    return records


def _is_local_model(backend: Any) -> bool:
    from visprog.llm.clients import TransformersBackend

    return isinstance(backend, TransformersBackend)


def _refused_alike(pending: Sequence[_Pending]) -> tuple[_Pending, ServiceError] | None:
    """Every item of the chunk that was asked refused with one and the same message (two or more):
    a setup problem (a wrong model name some servers answer with HTTP 400), not the items. The chunk
    then stops at the first of them, as for an outage, so that no item keeps a refusal as its record.
    """
    asked = [p for p in pending if p.inputs is not None]
    refusals = [p.plans[-1] for p in asked if p.plans and isinstance(p.plans[-1], ServiceError)]
    if len(asked) < 2 or len(refusals) < len(asked) or len({str(e) for e in refusals}) != 1:
        return None
    first = refusals[0]
    assert isinstance(first, ServiceError)
    return asked[0], ServiceError(
        f"every request of {len(asked)} items was refused the same way, which points at the setup "
        f"(the model name, the server) rather than the items: {first}"
    )


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
        if isinstance(last, ServiceError):  # the LLM refused this request: no program came back
            failure, error = "plan_parse", str(last)
        else:
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
        "load_seconds": p.load_seconds,
        "plan_seconds": p.plan_seconds,
        "run_seconds": p.run_seconds,
        "seconds": p.load_seconds + p.plan_seconds + p.run_seconds,
    }
