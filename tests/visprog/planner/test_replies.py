"""The reply corpus: every file under tests/programs/replies/ is a test.

``NAME.txt`` is a reply written the way chat and completion models answer.
``NAME.expected`` holds the canonical program the planner hands out for it
(:func:`visprog.language.format.format_program` of what it read: arguments
named, modules under their declared names, canonical spacing and quotes), or
is empty when the reply holds no program; ``NAME.diagnostics`` holds the exact
diagnostics the repair round sends back, pointing into the reply.

Each reply goes through the planner end to end: the real openai client asks a
scripted server on 127.0.0.1, which answers with the reply.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests import fakes
from tests.llm_server import ScriptedServer
from visprog.language.format import format_program
from visprog.language.signatures import Registry
from visprog.llm import client_from_options
from visprog.planner.core import Plan, Planner, PlanningError
from visprog.planner.extract import read_reply
from visprog.running.plugins import default_registry

REPLIES = Path(__file__).resolve().parents[2] / "programs" / "replies"
ALL = sorted(REPLIES.glob("*.txt"))
#: What the repair round tells a model whose reply holds no program.
NO_PROGRAM = "The reply contains no program. Answer with the program only, one step per line."


def read(path: Path) -> str:
    """The file's text exactly as stored (CRLF, BOM and every invisible character kept)."""
    return path.read_bytes().decode("utf-8")


def expected(path: Path) -> str:
    text = read(path)
    return text[:-1] if text.endswith("\n") else text


def task_of(reply: str) -> str:
    """The task a reply answers: the one whose inputs it reads (two images: LEFT and RIGHT)."""
    return "nlvr" if re.search(r"\b(?:LEFT|RIGHT)\b", reply) else "gqa"


@pytest.fixture(scope="module")
def registry() -> Registry:
    return default_registry()


def plan(server: ScriptedServer, registry: Registry, reply: str) -> Plan:
    """What the planner hands out when the model answers ``reply`` (no repair round, no cache)."""
    server.script([reply])
    backend = client_from_options(base_url=server.url, model="tiny-planner", max_retries=0, timeout=5)
    planner = Planner(backend, registry=registry, repair_rounds=0, cache=False)
    return planner.plan(task_of(reply), "What does the image show?")


def test_corpus_size() -> None:
    assert len(ALL) >= 80
    for reply in ALL:
        answers = [reply.with_suffix(s).exists() for s in (".expected", ".diagnostics")]
        assert answers.count(True) == 1, f"{reply.name} needs one .expected or .diagnostics file"


@pytest.mark.parametrize("path", ALL, ids=[p.stem for p in ALL])
def test_reply(path: Path, registry: Registry, llm_server: ScriptedServer) -> None:
    reply = read(path)
    reading = read_reply(reply, lambda program: fakes.check(program, registry=registry))
    if path.with_suffix(".diagnostics").exists():
        diagnostics = expected(path.with_suffix(".diagnostics"))
        assert reading.error is not None, f"{path.stem} checked: {reading.program!r}"
        assert reading.error.render() == diagnostics
        with pytest.raises(PlanningError) as refused:
            plan(llm_server, registry, reply)
        assert [a.error for a in refused.value.attempts] == [diagnostics]  # the text the repair round sends
        return
    program = expected(path.with_suffix(".expected"))
    if not program:
        assert reading.program == "" and reading.value is None
        with pytest.raises(PlanningError) as refused:
            plan(llm_server, registry, reply)
        assert [a.error for a in refused.value.attempts] == [NO_PROGRAM]
        return
    # extraction finds a program that checks, and its canonical form is the expected one
    assert reading.program.strip()
    assert reading.error is None, reading.error.render()
    assert reading.value is not None
    assert format_program(reading.value) == program + "\n"
    # the planner hands out exactly that program, the reply as written kept in its attempts
    planned = plan(llm_server, registry, reply)
    assert planned.program == program
    assert planned.canonical == program + "\n"
    assert [(a.reply, a.program, a.error) for a in planned.attempts] == [(reply, reading.program, None)]
    assert planned.checked.source.rstrip("\n") == program
    # the canonical program checks, and formatting it again changes nothing
    checked = fakes.check(program, registry=registry)
    assert [s.step.target for s in checked.steps] == [s.step.target for s in planned.checked.steps]
    assert format_program(checked) == program + "\n"
    assert format_program(program, registry) == program + "\n"
