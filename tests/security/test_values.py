"""Inputs that are values: each out-of-range or wrongly typed value is refused where it enters, saying which.

Number options of every command are checked by argparse (a usage error, exit status 2); a config file's keys
when the file is read; the Python API's arguments when a function is called; an image path that is not a
regular file (a FIFO, a device) before it is read, so that a FIFO never blocks.
"""

from __future__ import annotations

import argparse
import io
import os
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from visprog import check, run
from visprog.apps.cli import VALUE_TYPES, build_parser, main
from visprog.errors import ConfigError, ImageError
from visprog.running.images import load_image
from visprog.running.runtime import Runtime, read_config

PROGRAM = "FINAL=Result(var=IMAGE)"
EVAL = ["eval", "data.jsonl", "--task", "gqa", "-o", "out.jsonl"]
ASK = ["ask", "photo.png", "How many?"]


def _usage_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """The message of the usage error ``argv`` makes; it must end the command with status 2."""
    with pytest.raises(SystemExit) as raised:
        main(argv, out=io.StringIO(), err=io.StringIO())
    assert raised.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["exec", PROGRAM, "--max-pixels", "0"], "argument --max-pixels: must be 1 or more, got 0"),
        ([*ASK, "--max-pixels", "-5"], "argument --max-pixels: must be 1 or more, got -5"),
        ([*ASK, "--samples", "0"], "argument --samples: must be 1 or more, got 0"),
        ([*EVAL, "--samples", "0"], "argument --samples: must be 1 or more, got 0"),
        ([*ASK, "--repair", "-1"], "argument --repair: must be 0 or more, got -1"),
        ([*EVAL, "--batch-size", "0"], "argument --batch-size: must be 1 or more, got 0"),
        ([*EVAL, "--max-batch", "0"], "argument --max-batch: must be 1 or more, got 0"),
        (["api", "--max-batch", "0"], "argument --max-batch: must be 1 or more, got 0"),
        ([*EVAL, "--plan-workers", "0"], "argument --plan-workers: must be 1 or more, got 0"),
        ([*ASK, "--temperature", "nan"], "argument --temperature: must be a finite number 0 or more, got nan"),
        ([*ASK, "--temperature", "-0.5"], "argument --temperature: must be a finite number 0 or more, got -0.5"),
        ([*ASK, "--timeout", "inf"], "argument --timeout: must be a finite number more than 0, got inf"),
        ([*ASK, "--max-tokens", "0"], "argument --max-tokens: must be 1 or more, got 0"),
        (["serve", "--max-upload-mb", "0"], "argument --max-upload-mb: must be a finite number more than 0, got 0"),
        (["api", "--max-upload-mb", "nan"], "argument --max-upload-mb: must be a finite number more than 0, got nan"),
        (["api", "--max-concurrent", "0"], "argument --max-concurrent: must be 1 or more, got 0"),
        (["api", "--max-queue", "-1"], "argument --max-queue: must be 0 or more, got -1"),
        (["api", "--window-ms", "-1"], "argument --window-ms: must be a finite number 0 or more, got -1"),
        (["api", "--request-timeout", "0"], "argument --request-timeout: must be a finite number more than 0, got 0"),
        (["mcp", "--max-request-mb", "inf"], "argument --max-request-mb: must be a finite number more than 0, got inf"),
        ([*ASK, "--samples", "two"], "argument --samples: expected a whole number, got 'two'"),
        ([*ASK, "--temperature", "hot"], "argument --temperature: expected a number, got 'hot'"),
    ],
)
def test_a_number_option_out_of_range_is_a_usage_error(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    err = _usage_error(argv, capsys)
    assert err.splitlines()[-1].endswith(f"error: {message}")
    assert "Traceback" not in err


@pytest.mark.parametrize("command", [["serve"], ["api"], ["mcp", "--transport", "http"]])
def test_a_port_out_of_range_is_a_usage_error(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*command, "--port", "99999"], out=io.StringIO(), err=(err := io.StringIO())) == 2
    assert err.getvalue() == "error: --port 99999: a port is a number from 1 to 65535\n"


def test_values_in_range_are_taken() -> None:
    parser = build_parser()
    args = parser.parse_args([*EVAL, "--repair", "0", "--temperature", "0", "--max-batch", "1", "--samples", "3"])
    assert (args.repair, args.temperature, args.max_batch, args.samples, args.batch_size) == (0, 0.0, 1, 3, 16)
    args = parser.parse_args(["api", "--window-ms", "0", "--max-queue", "0", "--max-upload-mb", "0.5"])
    assert (args.window_ms, args.max_queue, args.max_upload_mb, args.request_timeout) == (0.0, 0, 0.5, 300.0)


def _options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for command in action.choices.values():
                found += _options(command)
        elif action.option_strings:
            found.append(action)
    return found


def test_every_number_option_of_every_command_has_a_range() -> None:
    """A new ``type=int`` or ``type=float`` option must be given its range in ``VALUE_TYPES``."""
    checked_where_used = {"--port", "--examples", "--see-image-side", "--limit"}  # with messages of their own
    options = _options(build_parser())
    unchecked = {
        flag for action in options if action.type in (int, float) for flag in action.option_strings
    } - checked_where_used
    assert unchecked == set()
    present = {flag for action in options for flag in action.option_strings}
    assert set(VALUE_TYPES) <= present  # no range for an option that does not exist


# --- config files ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (b"device = 3\n", 'device must be a string, e.g. "cuda", got 3'),
        (b"llm = 3\n", "llm must be a table, [llm], got 3"),
        (b"modules = [1]\n", "modules must be tables, [modules.NAME], got [1]"),
        (b"[llm]\ntimeout = 'soon'\n", "[llm] timeout must be a number, got 'soon'"),
        (b"[llm]\ntemperature = true\n", "[llm] temperature must be a number, got True"),
        (b"[llm]\nmax_tokens = 1.5\n", "[llm] max_tokens must be a whole number, got 1.5"),
        (b"[llm]\nstop = [1]\n", "[llm] stop must be a string or a list of strings, got [1]"),
        (b"[llm]\nmodel = 7\n", "[llm] model must be a string, got 7"),
        (b'device = "\xff"\n', "is not UTF-8 text (byte 10: invalid start byte)"),
    ],
)
def test_a_config_file_with_a_wrong_value_is_refused_when_read(tmp_path: Path, text: bytes, message: str) -> None:
    config = tmp_path / "config.toml"
    config.write_bytes(text)
    for load in (read_config, Runtime.from_config):
        with pytest.raises(ConfigError) as raised:
            load(config)
        assert str(raised.value).startswith(f"config file {config}")
        assert str(raised.value).endswith(message)


def test_a_config_file_naming_an_unknown_backend_is_refused_when_read(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[modules.Loc]\nbackend = "nope"\n')
    with pytest.raises(ConfigError, match=r"config file .*: Loc has no backend 'nope'; choose one of"):
        Runtime.from_config(config)


def test_the_cli_reports_a_wrong_config_value_before_it_runs(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_bytes(b"[llm]\nmax_retries = 'many'\n")
    code = main(["check", PROGRAM, "--config", str(config)], out=io.StringIO(), err=(err := io.StringIO()))
    assert code == 1
    assert err.getvalue() == f"error: config file {config}: [llm] max_retries must be a whole number, got 'many'\n"


def test_a_config_file_of_the_right_types_is_read(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('device = "cpu"\nhalf = false\n[llm]\ntemperature = 0\ntimeout = 2.5\nstop = "END"\n')
    runtime = Runtime.from_config(config)
    assert (runtime.device_request, runtime.half) == ("cpu", False)
    assert runtime.llm == {"temperature": 0, "timeout": 2.5, "stop": "END"}


# --- the Python API -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: check(b"FINAL=Result(var=IMAGE)"), r"^check: program must be the program's text \(a str\), got bytes"),  # type: ignore[arg-type]
        (lambda: check(None), r"^check: program must be the program's text \(a str\), got NoneType"),  # type: ignore[arg-type]
        (lambda: check(PROGRAM, inputs="IMAGE"), r"^check: inputs must be a list of names or a mapping"),
        (lambda: run(None, {}), r"^run: program must be a str or a CheckedProgram \(from check\), got NoneType"),  # type: ignore[arg-type]
        (lambda: run(b"FINAL=Result(var=1)", {}), r"^run: program must be a str or a CheckedProgram .*got bytes"),  # type: ignore[arg-type]
    ],
)
def test_the_python_api_refuses_a_wrong_type_with_what_it_expects(call: Callable[[], object], message: str) -> None:
    with pytest.raises(TypeError, match=message):
        call()


# --- image paths that are not files ---------------------------------------------------------------------------


def _load_within(path: str, seconds: float = 10.0) -> BaseException | None:
    """What loading ``path`` raised; fails the test when it has not ended within ``seconds`` (a FIFO blocks)."""
    raised: list[BaseException] = []

    def load() -> None:
        try:
            load_image(path)
        except BaseException as e:
            raised.append(e)

    thread = threading.Thread(target=load, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"loading {path} did not end within {seconds} s"
    return raised[0] if raised else None


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_a_fifo_given_as_an_image_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "photo.png"
    os.mkfifo(fifo)
    error = _load_within(str(fifo))
    assert isinstance(error, ImageError)
    assert str(error) == f"{fifo}: not a regular file (a FIFO, a device or a socket); give an image file"
    code = main(["exec", PROGRAM, "--image", f"IMAGE={fifo}"], out=io.StringIO(), err=(err := io.StringIO()))
    assert code == 1 and "not a regular file" in err.getvalue()


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="no /dev/zero here")
@pytest.mark.parametrize("device", ["/dev/zero", "/dev/null"])
def test_a_device_given_as_an_image_is_refused(device: str) -> None:
    error = _load_within(device)
    assert isinstance(error, ImageError) and "not a regular file" in str(error)
