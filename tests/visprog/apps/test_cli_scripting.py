"""The command line in scripts, run as real processes: the answer alone on standard output, everything else on
standard error, ``--json``, ``check --format json``, what ``-o`` means, exit statuses, closed pipes.

Offline: FaceDet with its scikit-image cascade, and a scripted OpenAI-compatible server on 127.0.0.1 for the
commands that plan.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image as PILImage
from skimage import data

import visprog
from tests.llm_server import ScriptedServer, serve_scripted
from tests.servers import clean_llm_env
from visprog.running.tracing import Trace

CASCADE = ["--backend", "FaceDet=cascade"]

#: a face (the cascade finds one in the astronaut photo), an image step, and a count as the answer
FACES = (
    "OBJ0=FaceDet(image=IMAGE)\nIMAGE0=Emoji(image=IMAGE, object=OBJ0, emoji='grinning_face')\n"
    "ANSWER0=Count(box=OBJ0)\nFINAL_RESULT=Result(var=ANSWER0)\n"
)
HIDE = (
    "OBJ0=FaceDet(image=IMAGE)\nIMAGE0=Emoji(image=IMAGE, object=OBJ0, emoji='grinning_face')\n"
    "FINAL_RESULT=Result(var=IMAGE0)"
)
FAILING = "OBJ0=FaceDet(image=IMAGE)\nN=Count(box=OBJ0)\nX=Eval(expr='{N} / 0')\nFINAL_RESULT=Result(var=X)"


@pytest.fixture(scope="module")
def photo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("photo") / "astronaut.jpg"
    PILImage.fromarray(data.astronaut()).save(path, quality=75)  # the cascade finds exactly one face
    return path


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[ScriptedServer]:
    clean_llm_env(monkeypatch, tmp_path / "cache")
    with serve_scripted() as scripted:
        monkeypatch.setenv("OPENAI_BASE_URL", scripted.url)
        monkeypatch.setenv("VISPROG_LLM_MODEL", "tiny")
        yield scripted


def visprog_run(*argv: str | Path, cwd: Path, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    env.pop("NO_COLOR", None)
    return subprocess.run(
        [sys.executable, "-m", "visprog", *map(str, argv)],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=120,
    )


def assert_quiet_failure(proc: subprocess.CompletedProcess[str], code: int) -> None:
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr


# --- exec -------------------------------------------------------------------------------------------------------


def test_exec_prints_the_answer_on_stdout_and_the_trace_on_stderr(photo: Path, tmp_path: Path) -> None:
    proc = visprog_run("exec", FACES, "-i", photo, *CASCADE, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "FINAL_RESULT: 1\n"
    assert "line  1  OBJ0 = FaceDet(image=IMAGE [512x512])\n         -> Objects (1)" in proc.stderr
    assert "the result is an image" not in proc.stderr
    assert list(tmp_path.iterdir()) == []  # nothing written that was not asked for

    quiet = visprog_run("exec", FACES, "-i", photo, *CASCADE, "-q", cwd=tmp_path)
    assert (quiet.returncode, quiet.stdout, quiet.stderr) == (0, "1\n", "")


def test_exec_json_is_one_object_with_the_program_result_trace_files_and_timings(photo: Path, tmp_path: Path) -> None:
    proc = visprog_run("exec", FACES, "-i", photo, *CASCADE, "--json", "-o", "out", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "line  1" not in proc.stderr and "wrote" not in proc.stderr  # all of it is in the object
    report = json.loads(proc.stdout)
    assert report["ok"] is True and report["error"] is None
    assert (report["command"], report["program"], report["result"], report["result_var"]) == (
        "exec",
        FACES,
        1,
        "FINAL_RESULT",
    )
    assert report["files"] == [str(Path("out") / "steps" / "02_IMAGE0.png")]  # an answer, not an image: no result.png
    assert (tmp_path / "out" / "steps" / "02_IMAGE0.png").is_file()
    assert report["result_file"] is None and report["agreement"] is None
    assert set(report["timings"]) == {"plan", "run", "total"} and report["timings"]["plan"] is None
    assert 0 < report["timings"]["run"] <= report["timings"]["total"]
    trace = Trace.from_dict(report["trace"])  # the trace's own JSON form: it reads back
    assert [r.module for r in trace.records] == ["FaceDet", "Emoji", "Count", "Result"]
    assert trace.result == 1 and trace.step("IMAGE0").output.size == (512, 512)


def test_a_failed_run_prints_its_partial_trace_and_in_json_the_error(photo: Path, tmp_path: Path) -> None:
    proc = visprog_run("exec", FAILING, "-i", photo, *CASCADE, cwd=tmp_path)
    assert_quiet_failure(proc, 1)
    assert proc.stdout == ""
    assert "line  2  N = Count(box=OBJ0 [Objects (1)])\n         -> int 1" in proc.stderr
    assert "run failed at line 3 (Eval); not run: line 4 (it needs line 3)" in proc.stderr
    assert proc.stderr.rstrip().endswith("X=Eval(expr='{N} / 0')")  # the error comes last

    proc = visprog_run("exec", FAILING, "-i", photo, *CASCADE, "--json", cwd=tmp_path)
    assert_quiet_failure(proc, 1)
    report = json.loads(proc.stdout)
    assert report["ok"] is False and report["result"] is None and report["program"] == FAILING
    error = report["error"]
    assert (error["type"], error["line"], error["module"], error["target"]) == ("StepError", 3, "Eval", "X")
    assert "division by zero" in error["reason"]
    steps = report["trace"]["steps"]
    assert [(s["target"], s["error"] is None) for s in steps] == [("OBJ0", True), ("N", True), ("X", False)]
    assert "error: line 3, Eval (step X) failed" in proc.stderr


def test_json_reports_an_error_before_the_run_as_one_object_too(photo: Path, tmp_path: Path) -> None:
    bad = visprog_run("exec", "X=Count(box=IMAGE)\nFINAL_RESULT=Result(var=X)", "-i", photo, "--json", cwd=tmp_path)
    assert_quiet_failure(bad, 1)
    report = json.loads(bad.stdout)
    assert report["ok"] is False and report["trace"] is None
    (diagnostic,) = report["error"]["diagnostics"]
    assert (diagnostic["line"], diagnostic["column"], diagnostic["severity"]) == (1, 13, "error")
    assert "<argument>:1:13: argument 'box' of Count expects Objects, got Image" in bad.stderr

    missing = visprog_run("exec", HIDE, "-i", tmp_path / "nope.jpg", "--json", cwd=tmp_path)
    assert_quiet_failure(missing, 1)
    report = json.loads(missing.stdout)
    assert report["error"]["type"] == "ImageError" and "nope.jpg" in report["error"]["message"]
    assert set(report) >= {"program", "result", "agreement", "trace", "files", "timings"}  # the same shape


# --- check ------------------------------------------------------------------------------------------------------


def test_check_prints_file_line_col_and_json(tmp_path: Path) -> None:
    bad = tmp_path / "bad.vp"
    bad.write_text("OBJ0=FaceDett(image=IMAGE)\nX=Count(box=IMAGE)\nFINAL_RESULT=Result(var=Y)\n", encoding="utf-8")
    proc = visprog_run("check", bad, cwd=tmp_path)
    assert_quiet_failure(proc, 1)
    heads = [line for line in proc.stderr.splitlines() if line.startswith(f"{bad}:")]
    assert heads == [
        f"{bad}:1:6: unknown module 'FaceDett' (did you mean 'FaceDet'?)",
        f"{bad}:2:13: argument 'box' of Count expects Objects, got Image (input IMAGE)",
        f"{bad}:3:25: undefined variable 'Y'",
        f"{bad}: 3 check errors",
    ]

    proc = visprog_run("check", "--format", "json", bad, cwd=tmp_path)
    assert (proc.returncode, proc.stderr) == (1, "")
    report = json.loads(proc.stdout)
    assert (report["file"], report["ok"], report["kind"]) == (str(bad), False, "check error")
    assert [(d["line"], d["column"], d["severity"]) for d in report["diagnostics"]] == [
        (1, 6, "error"),
        (2, 13, "error"),
        (3, 25, "error"),
    ]
    assert report["diagnostics"][2]["message"] == "undefined variable 'Y'"
    assert report["diagnostics"][2]["source"] == "FINAL_RESULT=Result(var=Y)"

    proc = visprog_run("check", "--format", "json", "-", stdin="OBJ0=FaceDet(IMAGE)\nN=Count(OBJ0)\n", cwd=tmp_path)
    assert (proc.returncode, proc.stderr) == (0, "")
    report = json.loads(proc.stdout)
    assert (report["ok"], report["steps"], report["inputs"], report["result"]) == (
        True,
        2,
        ["IMAGE"],
        {"name": "N", "type": "int"},
    )
    (warning,) = report["diagnostics"]
    assert (warning["file"], warning["line"], warning["column"], warning["severity"]) == ("<stdin>", 2, 1, "warning")


# --- -o -----------------------------------------------------------------------------------------------------------


def test_output_is_a_result_file_with_an_image_suffix_and_a_folder_otherwise(photo: Path, tmp_path: Path) -> None:
    proc = visprog_run("exec", HIDE, "-i", photo, *CASCADE, "-o", "hidden.jpg", "-q", cwd=tmp_path)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "hidden.jpg\n", "")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hidden.jpg"]  # the result alone, no steps
    with PILImage.open(tmp_path / "hidden.jpg") as image:
        assert (image.format, image.size) == ("JPEG", (512, 512))

    proc = visprog_run("exec", HIDE, "-i", photo, *CASCADE, "-o", "run", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "FINAL_RESULT: Image 512x512\n"
    written = [tmp_path / "run" / "steps" / "02_IMAGE0.png", tmp_path / "run" / "result.png"]
    assert all(path.is_file() for path in written)
    assert [line for line in proc.stderr.splitlines() if line.startswith("wrote ")] == [
        f"wrote {Path('run') / 'steps' / '02_IMAGE0.png'}",
        f"wrote {Path('run') / 'result.png'}",
    ]


@pytest.mark.parametrize(
    ("output", "message"),
    [
        ("notes.txt", "-o notes.txt: that is a file, but -o names a folder unless the path ends in an image suffix"),
        ("notes.txt/out.png", "-o notes.txt/out.png: notes.txt is a file, not a folder"),
        ("shots.png", "-o shots.png: that is a folder, but a path ending in .png names the result file"),
    ],
)
def test_output_where_a_file_or_folder_is_in_the_way_is_one_clear_error(
    photo: Path, tmp_path: Path, output: str, message: str
) -> None:
    (tmp_path / "notes.txt").write_text("keep me", encoding="utf-8")
    (tmp_path / "shots.png").mkdir()
    proc = visprog_run("exec", HIDE, "-i", photo, *CASCADE, "-o", output, cwd=tmp_path)
    assert_quiet_failure(proc, 2)
    assert (proc.stdout, proc.stderr) == ("", f"error: {message}" + proc.stderr.split(message, 1)[1])
    assert len(proc.stderr.splitlines()) == 1
    assert (tmp_path / "notes.txt").read_text(encoding="utf-8") == "keep me"
    assert list((tmp_path / "shots.png").iterdir()) == []


# --- the commands that plan ---------------------------------------------------------------------------------------


def test_ask_prints_the_answer_alone_the_program_on_stderr_and_writes_no_file(
    server: ScriptedServer, photo: Path, tmp_path: Path
) -> None:
    server.script([FACES, FACES])
    work = tmp_path / "work"  # the plan cache is in tmp_path / "cache"
    work.mkdir()
    proc = visprog_run("ask", photo, "How many faces?", *CASCADE, "--no-cache", cwd=work)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "result: 1\n"
    assert proc.stderr.startswith(f"program:\n{FACES}\n")
    assert "line  3  ANSWER0 = Count(box=OBJ0 [Objects (1)])" in proc.stderr

    quiet = visprog_run("ask", photo, "How many faces?", *CASCADE, "--no-cache", "-q", cwd=work)
    assert (quiet.returncode, quiet.stdout, quiet.stderr) == (0, "1\n", "")
    assert list(work.iterdir()) == []


def test_edit_without_output_writes_nothing_and_says_how(server: ScriptedServer, photo: Path, tmp_path: Path) -> None:
    server.script([HIDE])
    work = tmp_path / "work"
    work.mkdir()
    proc = visprog_run("edit", photo, "Hide the face", *CASCADE, "--no-cache", cwd=work)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "result: Image 512x512\n"
    assert "the result is an image: -o FILE.png writes it" in proc.stderr
    assert list(work.iterdir()) == []  # no edit_result.png in the working folder


def test_ask_json_is_one_object_with_the_agreement_and_timings(
    server: ScriptedServer, photo: Path, tmp_path: Path
) -> None:
    server.script([FACES])
    proc = visprog_run("ask", photo, "How many faces?", *CASCADE, "--no-cache", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert (report["command"], report["task"], report["text"]) == ("ask", "gqa", "How many faces?")
    assert (report["program"], report["result"], report["agreement"]) == (FACES.rstrip("\n"), 1, 1.0)
    assert report["samples"] == {"drawn": 1, "valid": 1} and report["files"] == []
    assert set(report["timings"]) == {"plan", "run", "total"}
    assert 0 < report["timings"]["plan"] < report["timings"]["total"]
    assert Trace.from_dict(report["trace"]).result == 1


def test_edit_output_folder_and_file(server: ScriptedServer, photo: Path, tmp_path: Path) -> None:
    server.script([HIDE, HIDE])
    proc = visprog_run("edit", photo, "Hide the face", *CASCADE, "--no-cache", "-o", "edits", "-q", cwd=tmp_path)
    assert (proc.returncode, proc.stderr) == (0, "")
    assert proc.stdout == f"{Path('edits') / 'result.png'}\n"
    assert sorted(str(p.relative_to(tmp_path)) for p in (tmp_path / "edits").rglob("*.png")) == [
        str(Path("edits") / "result.png"),
        str(Path("edits") / "steps" / "02_IMAGE0.png"),
    ]
    proc = visprog_run(
        "edit", photo, "Hide the face", *CASCADE, "--no-cache", "--json", "-o", "hidden.webp", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["files"] == ["hidden.webp"] and report["result_file"] == "hidden.webp"
    assert report["result"] == "Image 512x512"
    with PILImage.open(tmp_path / "hidden.webp") as image:
        assert (image.format, image.size) == ("WEBP", (512, 512))


def test_a_failed_ask_prints_the_program_it_ran_and_its_partial_trace(
    server: ScriptedServer, photo: Path, tmp_path: Path
) -> None:
    server.script([FAILING, FAILING])
    proc = visprog_run("ask", photo, "Faces per zero?", *CASCADE, "--no-cache", cwd=tmp_path)
    assert_quiet_failure(proc, 1)
    assert proc.stdout == ""
    assert proc.stderr.startswith(f"program:\n{FAILING}\n")
    assert "line  2  N = Count(box=OBJ0 [Objects (1)])\n         -> int 1" in proc.stderr
    assert "error: line 3, Eval (step X) failed" in proc.stderr

    proc = visprog_run("ask", photo, "Faces per zero?", *CASCADE, "--no-cache", "--json", cwd=tmp_path)
    assert_quiet_failure(proc, 1)
    report = json.loads(proc.stdout)
    assert (report["ok"], report["program"], report["error"]["type"]) == (False, FAILING, "StepError")
    assert [s["target"] for s in report["trace"]["steps"]] == ["OBJ0", "N", "X"]


def test_planner_events_show_on_stderr_one_line_each(server: ScriptedServer, photo: Path, tmp_path: Path) -> None:
    unknown = "OBJ0=FaceDett(image=IMAGE)\nN=Count(box=OBJ)\nFINAL_RESULT=Result(var=N)"
    server.script([unknown, FACES])
    proc = visprog_run("ask", photo, "How many faces?", *CASCADE, "--plan-only", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == FACES  # --plan-only: the program is the answer
    assert proc.stderr == "repair round 1 of 2: 2 errors in the program, sent back to the LLM\n"

    proc = visprog_run("ask", photo, "How many faces?", *CASCADE, "--plan-only", cwd=tmp_path)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, FACES, "plan from the cache\n")
    assert len(server.requests) == 2  # the second plan came from the cache


# --- the command itself -------------------------------------------------------------------------------------------


def test_version_and_bare_visprog(tmp_path: Path) -> None:
    proc = visprog_run("--version", cwd=tmp_path)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, f"visprog {visprog.__version__}\n", "")
    proc = visprog_run(cwd=tmp_path)
    assert proc.returncode == 0 and proc.stderr == ""
    assert proc.stdout.startswith("usage: visprog")
    for command in ("exec", "check", "ask", "verify", "edit", "tag", "modules", "serve"):
        assert f"\n    {command} " in proc.stdout, command


def test_a_closed_pipe_ends_quietly(photo: Path, tmp_path: Path) -> None:
    """The reader goes after a few bytes of a long answer (a trace with its images): no traceback, status 141."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    argv = [sys.executable, "-m", "visprog", "exec", HIDE, "-i", str(photo), *CASCADE, "--json"]
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path, env=env) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        assert proc.stdout.read(12) == b'{"command": '
        proc.stdout.close()
        err = proc.stderr.read().decode()
        code = proc.wait(timeout=120)
    assert (code, err) == (141, "")

    shell = f"set -o pipefail; {sys.executable} -m visprog modules | head -n 1"
    piped = subprocess.run(["bash", "-c", shell], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert piped.returncode in (0, 141) and piped.stderr == ""
    assert piped.stdout.count("\n") == 1
