"""Control characters never reach the terminal raw.

A program's string literal, a model's reply, an answer, a diagnostic and a file name may hold ESC (``\\x1b[2J``
clears the screen), BEL, a carriage return (which overwrites what was printed) or U+202E (which reverses the
text after it). The command line shows each escaped (``\\x1b``, ``\\x07``, ``\\r``, ``\\u202e``), as ``git`` and
``ruff`` do; ``--json`` output is escaped by ``json.dumps``; diagnostics name the invisible characters. The
commands run as a user runs them: in a subprocess, standard output and standard error read as bytes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image as PILImage

from tests.llm_server import ScriptedServer, llm_server
from tests.servers import clean_llm_env
from visprog.apps.console import escape_controls, format_diagnostic, shown
from visprog.errors import Diagnostic

__all__ = ["llm_server"]

#: What a terminal must never get raw: clear the screen, ring the bell, go back to the start of the line, and
#: reverse the text that follows.
HOSTILE = "\x1b[2J\x07\r\u202e"
RAW = ("\x1b", "\x07", "\r", "\u202e")
ESCAPED = ("\\x1b[2J", "\\x07", "\\r", "\\u202e")
#: A program whose string holds all of them, as a model might write it (the carriage return as ``\\r``: a raw one
#: ends the line).
PROGRAM = "ANSWER0='gone\x1b[2J\x07\\r\u202efish'\nFINAL_RESULT=Result(var=ANSWER0)\n"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clean_llm_env(monkeypatch, tmp_path / "visprog-cache")


def visprog(*argv: str | Path, cwd: Path) -> tuple[int, str, str]:
    """(status, stdout, stderr) of ``python -m visprog ARGV``, both streams on pipes, read as bytes (so that a
    ``\\r`` is seen as it was written)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "FORCE_COLOR", "TERM")}
    done = subprocess.run(
        [sys.executable, "-m", "visprog", *map(str, argv)], capture_output=True, cwd=cwd, env=env, timeout=120
    )
    return done.returncode, done.stdout.decode(), done.stderr.decode()


def assert_no_raw_controls(*texts: str) -> None:
    for text in texts:
        for char in RAW:
            assert char not in text, f"{char!r} reached the terminal raw in:\n{text!r}"


def test_escape_controls_writes_each_control_as_an_escape() -> None:
    assert escape_controls(f"a{HOSTILE}b") == "a\\x1b[2J\\x07\\r\\u202eb"
    assert escape_controls("line 1\n\tline 2") == "line 1\n\tline 2"  # text of several lines keeps its shape
    assert escape_controls("line 1\n\tline 2", lines=False) == "line 1\\n\\tline 2"
    assert escape_controls("\x00\x7f\x9b\u200b\u2066\ufeff") == "\\x00\\x7f\\x9b\\u200b\\u2066\\ufeff"
    assert escape_controls("café 中文 👍 ok") == "café 中文 👍 ok"  # printable text of any script is left alone
    assert shown("\x1b]0;title\x07 at http://u:p@h/v1") == "\\x1b]0;title\\x07 at http://***@h/v1"


def test_a_diagnostic_escapes_its_message_and_keeps_its_caret_under_the_column() -> None:
    line = "A=Count(box=X\u202e)"
    diagnostic = Diagnostic(1, 14, "unexpected character '\x1b[2J'", line)
    text = format_diagnostic("bad\x1b.vp", diagnostic)
    assert_no_raw_controls(text)
    head, source, caret = text.split("\n")
    assert head == "bad\\x1b.vp:1:14: unexpected character '\\x1b[2J'"
    assert source == "  A=Count(box=X\ufffd)" and caret.index("^") == source.index("\ufffd")


def test_a_program_and_its_answer_are_shown_escaped(tmp_path: Path) -> None:
    program = tmp_path / "hostile.vp"
    program.write_text(PROGRAM, encoding="utf-8")
    code, out, err = visprog("exec", program, cwd=tmp_path)
    assert code == 0, err
    assert_no_raw_controls(out, err)
    assert out == "FINAL_RESULT: gone\\x1b[2J\\x07\\r\\u202efish\n"
    assert "ANSWER0='gone\\x1b[2J\\x07\\r\\u202efish'" in err  # the trace shows the program's line, escaped
    # --json: json.dumps escapes them; the answer reads back as it was
    code, out, err = visprog("exec", program, "--json", cwd=tmp_path)
    assert code == 0 and json.loads(out)["result"] == f"gone{HOSTILE}fish"
    assert_no_raw_controls(out, err)


def test_a_model_reply_and_its_diagnostics_are_shown_escaped(llm_server: ScriptedServer, tmp_path: Path) -> None:
    PILImage.new("RGB", (32, 24), "gray").save(tmp_path / "photo.png")
    # a reply that does not check (twice: the first request and the one repair round), then one that runs
    bad = f"X=Nope{HOSTILE}(a='{HOSTILE}')\nFINAL_RESULT=Result(var=X)"
    llm_server.script([bad, bad])
    argv = ["ask", "photo.png", f"What{HOSTILE}?", "--base-url", llm_server.url, "--model", "m", "--repair", "1"]
    code, out, err = visprog(*argv, cwd=tmp_path)
    assert code == 1 and "repair round 1 of 1" in err
    assert_no_raw_controls(out, err)
    assert "\\u202e" in err  # named or escaped, never raw
    llm_server.script([PROGRAM])
    code, out, err = visprog(*argv, "--no-cache", cwd=tmp_path)
    assert code == 0, err
    assert_no_raw_controls(out, err)
    assert out == "result: gone\\x1b[2J\\x07\\r\\u202efish\n"
    assert all(escaped in err for escaped in ESCAPED)  # the program, as the model wrote it, escaped
    # --plan-only prints the program itself: escaped too
    llm_server.script([PROGRAM])
    code, out, err = visprog(*argv, "--no-cache", "--plan-only", cwd=tmp_path)
    assert code == 0 and "ANSWER0='gone\\x1b[2J\\x07\\r\\u202efish'" in out
    assert_no_raw_controls(out, err)


def test_diagnostics_name_invisible_characters_and_escape_file_names(tmp_path: Path) -> None:
    program = tmp_path / "bidi\x1b[2J.vp"
    program.write_text("A=Count(box=X\u202e)\nFINAL_RESULT=Result(var=A)\n", encoding="utf-8")
    code, out, err = visprog("check", program.name, cwd=tmp_path)
    assert code == 1
    assert_no_raw_controls(out, err)
    assert "U+202E RIGHT-TO-LEFT OVERRIDE" in err and "bidi\\x1b[2J.vp:1:14:" in err
