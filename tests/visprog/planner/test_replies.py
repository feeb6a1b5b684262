"""The reply corpus: every file under tests/programs/replies/ is a test.

``NAME.txt`` is a reply written the way chat and completion models answer.
``NAME.expected`` holds the program the planner must read from it (empty: the
reply holds no program), and that program checks; ``NAME.diagnostics`` holds
the exact diagnostics the repair round sends back, pointing into the reply.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import fakes
from visprog.language.signatures import Registry
from visprog.planner.extract import read_reply
from visprog.running.plugins import default_registry

REPLIES = Path(__file__).resolve().parents[2] / "programs" / "replies"
ALL = sorted(REPLIES.glob("*.txt"))


def read(path: Path) -> str:
    """The file's text exactly as stored (CRLF, BOM and every invisible character kept)."""
    return path.read_bytes().decode("utf-8")


def expected(path: Path) -> str:
    text = read(path)
    return text[:-1] if text.endswith("\n") else text


@pytest.fixture(scope="module")
def registry() -> Registry:
    return default_registry()


def test_corpus_size() -> None:
    assert len(ALL) >= 80
    for reply in ALL:
        answers = [reply.with_suffix(s).exists() for s in (".expected", ".diagnostics")]
        assert answers.count(True) == 1, f"{reply.name} needs one .expected or .diagnostics file"


@pytest.mark.parametrize("path", ALL, ids=[p.stem for p in ALL])
def test_reply(path: Path, registry: Registry) -> None:
    reading = read_reply(read(path), lambda program: fakes.check(program, registry=registry))
    if path.with_suffix(".expected").exists():
        program = expected(path.with_suffix(".expected"))
        assert reading.program == program
        assert reading.error is None, reading.error.render()
        if program:
            assert reading.value is not None
    else:
        assert reading.error is not None, f"{path.stem} checked: {reading.program!r}"
        assert reading.error.render() == expected(path.with_suffix(".diagnostics"))
