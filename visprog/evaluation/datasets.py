"""Data sets: the items of an evaluation and the file formats they are read from.

:func:`load_items` reads (the format is detected):

- our JSONL: one object a line with ``id``, the images under the task's input
  names in lower case (``image`` for gqa, edit and tag; ``left`` and ``right``
  for nlvr), ``question`` (or ``statement`` / ``instruction`` / ``text``) and
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

Every item must have the images its task reads (the task's ``inputs``, from its
TOML file: :mod:`visprog.planner.tasks`), checked as the file is loaded.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from visprog.errors import ConfigError
from visprog.planner.tasks import Task, get_task, input_names

__all__ = ["Item", "load_items", "missing_images"]


@dataclass(frozen=True)
class Item:
    """One question, statement or instruction with its images (input name → file path or URL) and answer.

    ``task`` is the task's name (:func:`visprog.planner.tasks.get_task`).
    """

    id: str
    task: str
    text: str
    images: dict[str, str]
    answer: Any = None


def load_items(path: str | Path, task: str, *, images: str | Path | None = None) -> list[Item]:
    """The items of a data file: our JSONL, GQA question JSON or NLVR2 JSONL (the format is detected).

    ``task`` is a task's name (or a :class:`~visprog.planner.tasks.Task`). ``images`` is the folder
    image names are relative to (default: the data file's folder). Every item must have the images
    the task reads (its ``inputs``: one image for gqa, edit and tag, a left and a right one for
    nlvr): the first item that does not is a :class:`ConfigError`, as is an unknown task or a file
    with no items.
    """
    spec = get_task(task)
    source = Path(path)
    try:
        data = source.read_bytes()
    except OSError as e:
        raise ConfigError(f"{source}: cannot read the data file: {e.strerror or e}") from None
    try:
        text = data.decode("utf-8-sig")  # a byte order mark, as some editors write, is not part of the data
    except UnicodeDecodeError as e:
        row, column = data.count(b"\n", 0, e.start) + 1, e.start - data.rfind(b"\n", 0, e.start)
        raise ConfigError(
            f"{source}:{row}:{column}: not UTF-8 text (byte 0x{data[e.start]:02X}): "
            "save the data file as UTF-8 (JSON files are UTF-8)"
        ) from None
    # absolute, so that Ray workers (whose working folder may differ) find the images too
    root = (Path(images) if images is not None else source.parent).absolute()
    whole = _whole_json(text)
    if isinstance(whole, dict) and not whole:
        raise ConfigError(f"{source}: the file has no items (an empty JSON object)")
    if isinstance(whole, dict) and _looks_like_gqa(whole):
        return [_checked(_gqa_item(source, str(qid), q, spec, root), spec, f"{source}") for qid, q in whole.items()]
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
                item = _nlvr2_item(row, spec, root)
            else:
                item = _our_item(row, spec, root)
        except KeyError as e:
            raise ConfigError(f"{source}:{number}: missing key {e}") from None
        items.append(_checked(item, spec, f"{source}:{number}"))
    seen: set[str] = set()
    for item in items:
        if item.id in seen:
            raise ConfigError(f"{source}: the id '{item.id}' occurs more than once")
        seen.add(item.id)
    return items


#: Keys of one item of our JSONL or NLVR2 (besides the images): a JSON object with one is a row, not a GQA file.
_ROW_KEYS = frozenset({"id", "identifier", "question", "statement", "instruction", "text"})

#: The keys our JSONL may hold an item's text under, the first found wins.
_TEXT_KEYS = ("question", "statement", "instruction", "text")


def _image_key(name: str) -> str:
    """The key our JSONL holds the image of input ``name`` under: ``IMAGE`` → ``image``, ``LEFT`` → ``left``."""
    return name.lower()


def _looks_like_gqa(whole: Mapping[str, Any]) -> bool:
    """Whether a JSON object is a GQA question file (question id → entry), not a one-line JSONL row."""
    keys = _ROW_KEYS | {_image_key(name) for name in input_names()}
    return not (keys & set(whole)) and any(isinstance(v, dict) for v in whole.values())


def _describe_images(names: Iterable[str]) -> str:
    given = list(names)
    if len(given) == 1:
        return f"one image ({given[0]})"
    if len(given) == 2:
        return f"two images ({given[0]} and {given[1]})"
    return "the images " + ", ".join(given) if given else "no image"


def _inputs_by_position(task: Task, paths: Sequence[str], fallback: Sequence[str]) -> dict[str, str]:
    """A data set's images in its own order, named as ``task`` names its inputs when the counts agree.

    (GQA items have one image, NLVR2 items two; a task with as many inputs reads them in order.
    With another count, ``fallback`` names them, and the item is refused as not fitting the task.)
    """
    names = task.inputs if len(task.inputs) == len(paths) else fallback
    return dict(zip(names, paths, strict=True))


def _describe_keys(names: Sequence[str]) -> str:
    """How our JSONL names these inputs' images: ``key 'image'``, ``keys 'left' and 'right'``."""
    keys = [f"'{_image_key(name)}'" for name in names]
    if len(keys) == 1:
        return f"key {keys[0]}"
    return "keys " + ", ".join(keys[:-1]) + " and " + keys[-1]


def _checked(item: Item, task: Task, where: str) -> Item:
    """``item``, when it has exactly the images ``task``'s programs read (else a :class:`ConfigError`)."""
    wanted = task.inputs
    if set(item.images) != set(wanted):
        raise ConfigError(
            f"{where}: item '{item.id}' has {_describe_images(item.images)} but task {task.name} needs "
            f"{_describe_images(wanted)} ({_describe_keys(wanted)}): is --task right for this file?"
        )
    return item


def _whole_json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None  # JSONL (or broken: reported line by line)


def _gqa_item(source: Path, qid: str, q: Any, task: Task, root: Path) -> Item:
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
    images = _inputs_by_position(task, [str(root / f"{q['imageId']}.jpg")], ["IMAGE"])
    return Item(qid, task.name, str(q["question"]), images, q.get("answer"))


def _nlvr2_item(row: Mapping[str, Any], task: Task, root: Path) -> Item:
    identifier = str(row["identifier"])
    stem = identifier.rsplit("-", 1)[0]
    paths: list[str] = []
    for k, url in ((0, "left_url"), (1, "right_url")):
        file = f"{stem}-img{k}.png"
        candidates = [root / file]
        if row.get("directory") is not None:
            candidates.append(root / str(row["directory"]) / file)
        found = next((c for c in candidates if c.is_file()), None)
        paths.append(str(found if found is not None else row.get(url) or candidates[0]))
    images = _inputs_by_position(task, paths, ["LEFT", "RIGHT"])
    return Item(identifier, task.name, str(row["sentence"]), images, row.get("label"))


def _our_item(row: Mapping[str, Any], task: Task, root: Path) -> Item:
    """An item of our JSONL: its images are under the lower-cased input names of any task (checked later)."""
    text = next((row[k] for k in _TEXT_KEYS if k in row), None)
    if text is None:
        raise KeyError("question")
    images = {name: row[_image_key(name)] for name in input_names() if _image_key(name) in row}
    if not images:
        raise KeyError(_image_key(task.inputs[0]))
    resolved = {k: str(v) if "://" in str(v) else str(root / str(v)) for k, v in images.items()}
    return Item(str(row["id"]), task.name, str(text), resolved, row.get("answer"))


def missing_images(items: Sequence[Item]) -> tuple[int, str | None]:
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
