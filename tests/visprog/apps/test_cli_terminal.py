"""The command line on a terminal: help text for every option, colour on a terminal only (``NO_COLOR``,
``FORCE_COLOR``), and ``serve`` on a port that is taken (one clear line, quickly, no traceback)."""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from visprog.apps.cli import build_parser
from visprog.apps.console import colour_on, format_diagnostic
from visprog.errors import Diagnostic

#: a check error (with a source line and a caret) and a warning (no result step)
BAD = "X=Count(box=Y)\nFINAL_RESULT=Result(var=X)"
NO_RESULT = "X=Eval(expr='1 + 1')"
ESC = "\x1b["


def _env(**extra: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "NO_COLOR", "FORCE_COLOR", "TERM")}
    return {**base, "TERM": "xterm-256color", **extra}


def run_on_terminal(*argv: str, cwd: Path, **env: str) -> tuple[int, str, str]:
    """(status, stdout, stderr) of ``python -m visprog ARGV`` with standard error on a pseudo-terminal and
    standard output on a pipe."""
    master, slave = os.openpty()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "visprog", *argv],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=slave,
            cwd=cwd,
            env=_env(**env),
        )
    finally:
        os.close(slave)
    err = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # EIO: the last writer closed the terminal
            break
        if not chunk:
            break
        err += chunk
    os.close(master)
    assert proc.stdout is not None
    out = proc.stdout.read().decode()
    proc.stdout.close()
    return proc.wait(timeout=60), out, err.decode().replace("\r\n", "\n")


def run_in_pipes(*argv: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "visprog", *argv], capture_output=True, text=True, cwd=cwd, env=_env(**env), timeout=60
    )


# --- help text ------------------------------------------------------------------------------------------------------


def _parsers(parser: argparse.ArgumentParser) -> list[tuple[str, argparse.ArgumentParser]]:
    found = [(parser.prog, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):
                found += _parsers(sub)
    return found


def test_every_option_and_argument_of_every_command_has_help_text() -> None:
    parsers = _parsers(build_parser())
    assert {"visprog exec", "visprog ask", "visprog serve", "visprog eval", "visprog cache"} <= {n for n, _ in parsers}
    missing = [
        f"{name} {'/'.join(action.option_strings) or action.dest}"
        for name, parser in parsers
        for action in parser._actions
        if not isinstance(action, argparse._HelpAction) and not (action.help or "").strip()
    ]
    assert missing == []
    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert all((c.help or "").strip() for c in commands._choices_actions)


def test_every_command_takes_plugin_config_and_traceback() -> None:
    for name, parser in _parsers(build_parser())[1:]:
        options = {o for a in parser._actions for o in a.option_strings}
        assert {"--plugin", "--config", "--traceback"} <= options, name


# --- colour ---------------------------------------------------------------------------------------------------------


def test_diagnostics_are_coloured_on_a_terminal(tmp_path: Path) -> None:
    code, out, err = run_on_terminal("check", BAD, cwd=tmp_path)
    assert (code, out) == (1, "")
    assert err == (
        f"{ESC}1m<argument>:1:13:{ESC}0m undefined variable 'Y'\n"
        "  X=Count(box=Y)\n"
        f"              {ESC}1;31m^{ESC}0m\n"
        "<argument>: 1 check error\n"
    )
    code, _, err = run_on_terminal("check", NO_RESULT, cwd=tmp_path)
    assert code == 0 and f"{ESC}1m<argument>:1:1:{ESC}0m {ESC}1;33mwarning:{ESC}0m the program has no result" in err
    code, _, err = run_on_terminal("exec", BAD, "--plugin", "gone.py", cwd=tmp_path)
    assert (code, err) == (2, f"{ESC}1;31merror:{ESC}0m plugin file gone.py (--plugin): no such file\n")


def test_no_color_turns_colour_off_on_a_terminal(tmp_path: Path) -> None:
    plain = run_in_pipes("check", BAD, cwd=tmp_path)
    for argv in (["check", BAD], ["check", NO_RESULT], ["exec", BAD, "--plugin", "gone.py"]):
        code, _, err = run_on_terminal(*argv, cwd=tmp_path, NO_COLOR="1", FORCE_COLOR="1")
        assert ESC not in err and err
    code, _, err = run_on_terminal("check", BAD, cwd=tmp_path, NO_COLOR="1")
    assert (code, err) == (plain.returncode, plain.stderr)
    code, _, err = run_on_terminal("check", BAD, cwd=tmp_path, NO_COLOR="")  # empty: as if not set
    assert ESC in err


def test_a_pipe_gets_no_colour_unless_forced(tmp_path: Path) -> None:
    proc = run_in_pipes("check", BAD, cwd=tmp_path)
    assert proc.returncode == 1 and ESC not in proc.stderr
    assert proc.stderr.startswith("<argument>:1:13: undefined variable 'Y'\n")
    proc = run_in_pipes("check", BAD, "--format", "json", cwd=tmp_path, FORCE_COLOR="1")
    assert ESC not in proc.stdout  # the answer is never coloured
    proc = run_in_pipes("check", BAD, cwd=tmp_path, FORCE_COLOR="1")
    assert f"{ESC}1;31m^{ESC}0m" in proc.stderr
    proc = run_in_pipes("check", BAD, cwd=tmp_path, FORCE_COLOR="0")
    assert ESC not in proc.stderr


def test_colour_on_decides_from_the_stream_and_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    class Terminal:
        def isatty(self) -> bool:
            return True

    class Closed:
        def isatty(self) -> bool:
            raise ValueError("I/O operation on closed file")

    for name in ("NO_COLOR", "FORCE_COLOR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TERM", "xterm")
    assert colour_on(Terminal()) is True  # type: ignore[arg-type]
    assert colour_on(Closed()) is False  # type: ignore[arg-type]
    monkeypatch.setenv("TERM", "dumb")
    assert colour_on(Terminal()) is False  # type: ignore[arg-type]
    diagnostic = Diagnostic(line=2, column=3, message="something odd", source_line="A=B(c)")
    assert format_diagnostic("p.vp", diagnostic, "warning: ") == "p.vp:2:3: warning: something odd\n  A=B(c)\n    ^"


# --- serve on a port that is taken ----------------------------------------------------------------------------------


def test_serve_on_a_busy_port_is_one_clear_line(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        started = time.monotonic()
        proc = run_in_pipes("serve", "--port", str(port), cwd=tmp_path)
        seconds = time.monotonic() - started
    assert (proc.returncode, proc.stdout) == (2, "")
    assert proc.stderr == f"error: port {port} on 127.0.0.1 is in use; pick another with --port\n"
    assert seconds < 30  # no web app was built: the port was tried first

    proc = run_in_pipes("serve", "--port", "70000", cwd=tmp_path)
    assert (proc.returncode, proc.stderr) == (2, "error: --port 70000: a port is a number from 1 to 65535\n")
    proc = run_in_pipes("serve", "--host", "no-such-host.invalid", cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.startswith("error: --host no-such-host.invalid: no such address")
