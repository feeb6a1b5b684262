"""Golden programs: every file under tests/programs/ is a test.

``ok/NAME.vp`` parses, checks and runs on the fake modules (a program without
a result step returns its last step's value, with a warning); ``ok/NAME.json``
says which inputs it takes, the checker's result type and the expected result
(``{"image": [w, h]}`` for an image, ``{"objects": n}`` for objects, else the
JSON value itself), optional ``vqa_answers`` for the fake Vqa and optional ``warnings``:
what the parser accepted with a warning, as printed.

``bad/NAME.vp`` fails with exactly the text of ``bad/NAME.expected``; names
starting with ``syntax_`` fail to parse (:class:`ProgramSyntaxError`), names
starting with ``check_`` parse but fail the checker (:class:`ProgramCheckError`).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image as PILImage
from skimage import data

from tests import fakes
from tests.fakes import check
from visprog.errors import ProgramCheckError, ProgramError, ProgramSyntaxError
from visprog.language.parser import parse
from visprog.language.values import Detection
from visprog.running.interpreter import Interpreter
from visprog.running.runtime import Runtime

PROGRAMS = Path(__file__).resolve().parents[2] / "programs"
OK = sorted((PROGRAMS / "ok").glob("*.vp"))
BAD = sorted((PROGRAMS / "bad").glob("*.vp"))

#: FaceDet's cascade backend ships with scikit-image: no download, same boxes everywhere.
RUNTIME = Runtime(modules={"FaceDet": {"backend": "cascade"}})

#: bad programs whose expected text is right but visprog gets wrong (reported bugs).
KNOWN_BUGS: dict[str, str] = {}


def read(path: Path) -> str:
    """The file's text exactly as stored (CRLF kept)."""
    return path.read_bytes().decode("utf-8")


def _ids(paths: list[Path]) -> list[str]:
    return [p.stem for p in paths]


@functools.cache
def _image(name: str) -> PILImage.Image:
    return PILImage.fromarray(data.chelsea() if name == "RIGHT" else data.astronaut())


def _step_lines(source: str) -> int:
    lines = (line.lstrip("\ufeff").strip() for line in source.splitlines())  # a byte order mark reads as nothing
    return sum(1 for line in lines if line and not line.startswith("#"))


def _assert_result(actual: Any, expected: Any) -> None:
    if isinstance(expected, dict) and "image" in expected:
        assert isinstance(actual, PILImage.Image), f"expected an image, got {actual!r}"
        assert list(actual.size) == expected["image"]
    elif isinstance(expected, dict) and "objects" in expected:
        assert isinstance(actual, list), f"expected objects, got {actual!r}"
        assert all(isinstance(o, Detection) for o in actual)
        assert len(actual) == expected["objects"]
    elif isinstance(expected, float):
        assert type(actual) is float, f"expected a float, got {actual!r}"
        assert actual == pytest.approx(expected)
    else:
        assert type(actual) is type(expected), f"expected {expected!r}, got {actual!r}"
        assert actual == expected


def test_corpus_size() -> None:
    assert len(OK) >= 45
    assert len(BAD) >= 30


def test_every_program_has_its_expectation() -> None:
    for path in OK:
        assert path.with_suffix(".json").is_file(), path
    for path in BAD:
        assert path.with_suffix(".expected").is_file(), path
        assert path.name.startswith(("syntax_", "check_")), path
    stems_ok = {p.stem for p in OK}
    stems_bad = {p.stem for p in BAD}
    assert {p.stem for p in (PROGRAMS / "ok").glob("*.json")} == stems_ok
    assert {p.stem for p in (PROGRAMS / "bad").glob("*.expected")} == stems_bad
    assert set(KNOWN_BUGS) <= stems_bad


@pytest.mark.parametrize("path", OK, ids=_ids(OK))
def test_ok_program(path: Path) -> None:
    source = read(path)
    meta = json.loads(read(path.with_suffix(".json")))
    fakes.reset()
    fakes.VQA_ANSWERS.update(meta.get("vqa_answers", {}))
    registry = fakes.registry()

    program = parse(source)
    assert len(program.steps) == _step_lines(source)

    checked = check(program, meta["inputs"], registry=registry)
    assert str(checked.result_type) == meta["result_type"]
    assert len(checked.graph.nodes) == len(program.steps)
    assert [n.index for n in checked.graph.nodes] == list(range(len(program.steps)))
    assert set(checked.used_inputs) <= set(meta["inputs"])
    # what the parser read with a warning (an apostrophe that ended a string early): ok/NAME.json's "warnings"
    assert [str(w) for w in program.warnings] == meta.get("warnings", [])
    assert checked.warnings[: len(program.warnings)] == program.warnings
    checker_warnings = checked.warnings[len(program.warnings) :]
    if any(step.is_result for step in program.steps):
        assert checked.steps[checked.result].step.is_result
        assert not checker_warnings
    else:  # the last step's value is the result, with a warning
        assert checked.result == len(program.steps) - 1
        assert [w.message.split(":")[0] for w in checker_warnings] == ["the program has no result step"]

    inputs = {name: _image(name) for name in meta["inputs"]}
    trace = Interpreter(registry, RUNTIME).run(checked, inputs)
    assert trace.ok
    assert len(trace.records) == len(program.steps)
    _assert_result(trace.result, meta["result"])


def _bad_params() -> list[Any]:
    params = []
    for path in BAD:
        marks = [pytest.mark.xfail(strict=True, reason=KNOWN_BUGS[path.stem])] if path.stem in KNOWN_BUGS else []
        params.append(pytest.param(path, id=path.stem, marks=marks))
    return params


@pytest.mark.parametrize("path", _bad_params())
def test_bad_program(path: Path) -> None:
    source = read(path)
    expected = read(path.with_suffix(".expected"))
    if expected.endswith("\n"):
        expected = expected[:-1]
    kind = ProgramSyntaxError if path.name.startswith("syntax_") else ProgramCheckError

    if kind is ProgramCheckError:
        parse(source)  # it must get past the parser
    with pytest.raises(ProgramError) as info:
        check(source, registry=fakes.registry())
    error = info.value
    assert type(error) is kind
    assert str(error) == expected
    if "several" in path.stem:
        assert len(error.diagnostics) >= 3
    lines = source.splitlines()
    for d in error.diagnostics:
        assert 1 <= d.line <= max(len(lines), 1)
        assert d.source_line == (lines[d.line - 1] if lines else "")
