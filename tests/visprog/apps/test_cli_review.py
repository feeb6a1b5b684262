"""The command line where scripts and users push on its edges, run as real processes: how a PROGRAM argument is
named, ``--trace`` where a file or folder is in the way, a file that cannot be written after the run, ``--json``
on a usage error, a path the system refuses. No model and no LLM: Eval, Result and a small image.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image as PILImage

from visprog.running.tracing import Trace

#: a program whose answer is the input image
SAME = "R=Result(var=IMAGE)"


@pytest.fixture
def small_image(tmp_path: Path) -> Path:
    path = tmp_path / "small.png"
    PILImage.new("RGB", (24, 16), "teal").save(path)
    return path


@pytest.fixture
def work(tmp_path: Path) -> Path:
    folder = tmp_path / "work"
    folder.mkdir()
    return folder


def visprog_run(*argv: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VISPROG_") and k not in ("NO_COLOR", "PYTHONPATH")}
    return subprocess.run(
        [sys.executable, "-m", "visprog", *map(str, argv)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**env, "VISPROG_CACHE_DIR": str(cwd / ".." / "cache")},
        timeout=120,
    )


def test_program_text_is_named_argument_and_a_folder_or_binary_file_is_one_line(work: Path) -> None:
    proc = visprog_run("check", "foo\nbar", cwd=work)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.splitlines()[0] == "<argument>:1:4: expected '=' after the name, got the end of the line"
    assert proc.stderr.splitlines()[-1] == "<argument>: 2 syntax errors"

    proc = visprog_run("check", work, cwd=work)
    assert (proc.returncode, proc.stdout, proc.stderr) == (2, "", f"error: {work} is a folder, not a program file\n")

    binary = work / "photo.vp"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    proc = visprog_run("check", binary, cwd=work)
    assert (proc.returncode, proc.stderr) == (2, f"error: cannot read program file {binary}: it is not UTF-8 text\n")

    proc = visprog_run("check", "X=Eval(expr='1 + 1')\nFINAL_RESULT=Result(var=X)", cwd=work)
    assert (proc.returncode, proc.stdout) == (0, "<argument>: ok, 2 steps, inputs none, result FINAL_RESULT (any)\n")
    proc = visprog_run("check", SAME, cwd=work)
    assert (proc.returncode, proc.stdout) == (0, "<argument>: ok, 1 step, inputs IMAGE, result R (Image)\n")


@pytest.mark.parametrize(
    ("trace", "message"),
    [
        ("notes.txt/trace.html", "--trace notes.txt/trace.html: notes.txt is a file, not a folder"),
        ("pages", "--trace pages: that is a folder; --trace names the HTML file to write (trace.html)"),
    ],
)
def test_trace_where_a_file_or_folder_is_in_the_way_is_one_line_before_the_run(
    small_image: Path, work: Path, trace: str, message: str
) -> None:
    (work / "notes.txt").write_text("keep me", encoding="utf-8")
    (work / "pages").mkdir()
    proc = visprog_run("exec", SAME, "-i", small_image, "--trace", trace, cwd=work)
    assert (proc.returncode, proc.stdout, proc.stderr) == (2, "", f"error: {message}\n")
    assert sorted(p.name for p in work.iterdir()) == ["notes.txt", "pages"]
    assert list((work / "pages").iterdir()) == []


def test_a_result_file_that_cannot_be_written_still_shows_the_run(small_image: Path, work: Path) -> None:
    # Pillow writes .xbm files, but only of black-and-white images: the run ends well, the file cannot be saved
    proc = visprog_run("exec", SAME, "-i", small_image, "-o", "result.xbm", cwd=work)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stdout == ""
    assert "line  1  R = Result(var=IMAGE)\n         -> Image 24x16" in proc.stderr  # the trace is shown
    assert proc.stderr.splitlines()[-1].startswith("error: result.xbm: cannot save image")

    proc = visprog_run("exec", SAME, "-i", small_image, "-o", "result.xbm", "--json", cwd=work)
    assert proc.returncode == 1
    (line,) = proc.stdout.splitlines()  # one object, with the program and the trace of the run
    report = json.loads(line)
    assert (report["ok"], report["program"], report["error"]["type"]) == (False, SAME, "ImageError")
    assert Trace.from_dict(report["trace"]).ok
    assert list(work.iterdir()) == []


def test_json_on_a_usage_error_is_one_object_too(small_image: Path, work: Path) -> None:
    proc = visprog_run("exec", SAME, "-i", small_image, "--json", "--backend", "Nope=x", cwd=work)
    assert (proc.returncode, proc.stderr) == (2, "error: --backend: unknown module 'Nope'\n")
    (line,) = proc.stdout.splitlines()
    report = json.loads(line)
    assert (report["command"], report["ok"], report["trace"]) == ("exec", False, None)
    assert report["error"] == {"type": "UsageError", "message": "--backend: unknown module 'Nope'"}

    proc = visprog_run("ask", small_image, "What is it?", "--json", "--plugin", "nope.py", cwd=work)
    assert proc.returncode == 2
    report = json.loads(proc.stdout)
    assert (report["command"], report["task"], report["text"]) == ("ask", "gqa", "What is it?")
    assert report["error"] == {"type": "PluginError", "message": "plugin file nope.py (--plugin): no such file"}

    proc = visprog_run("modules", "--json", "--plugin", "nope.py", cwd=work)  # not a run: no run report
    assert (proc.returncode, proc.stdout) == (2, "")
    assert list(work.iterdir()) == []


def test_a_path_the_system_refuses_is_one_line_not_a_traceback(small_image: Path, work: Path) -> None:
    long = "a" * 300  # longer than a file name may be
    for argv in (
        ("exec", SAME, "-i", small_image, "-o", f"{long}.png"),
        ("exec", SAME, "-i", small_image, "--trace", f"{long}.html"),
        ("exec", SAME, "-i", f"{long}.png"),
        ("check", long),
    ):
        proc = visprog_run(*argv, cwd=work)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert proc.stderr.startswith("error: ") and "File name too long" in proc.stderr
        assert len(proc.stderr.splitlines()) == 1

    proc = visprog_run("exec", SAME, "-i", small_image, "-o", f"{long}.png", "--json", cwd=work)
    assert json.loads(proc.stdout)["error"]["message"].endswith("File name too long")
    assert list(work.iterdir()) == []
