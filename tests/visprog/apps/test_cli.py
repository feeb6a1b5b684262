"""The ``visprog`` command: in-process through ``main``, and as real subprocesses.

Everything runs offline on built-in modules that need no model: FaceDet with
the scikit-image cascade backend, the crops, ColorPop, Emoji, Count, Eval.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage
from skimage import data

from visprog.apps.cli import main

BUILTINS = ["Crop", "CropRightOf", "Count", "Eval", "Result", "ColorPop", "BgBlur", "Emoji", "Tag", "FaceDet"]

GOOD = textwrap.dedent(
    """\
    # face, the part below it, the face in colour, and a count
    OBJ0=FaceDet(image=IMAGE)
    IMAGE0=CropBelow(image=IMAGE, box=OBJ0)
    IMAGE1=ColorPop(image=IMAGE, object=OBJ0)
    N=Count(box=OBJ0)
    ANSWER=Eval(expr="'one face' if {N} == 1 else 'not one face'")
    FINAL_RESULT=Result(var=IMAGE1)
    """
)

BAD = textwrap.dedent(
    """\
    OBJ0=FaceDett(image=IMAGE)
    X=Count(box=IMAGE)
    FINAL_RESULT=Result(var=Y)
    """
)

# (line, column, message fragment, source line) of every diagnostic in BAD
BAD_DIAGNOSTICS = [
    (1, 6, "unknown module 'FaceDett' (did you mean 'FaceDet'?)", "OBJ0=FaceDett(image=IMAGE)"),
    (2, 13, "argument 'box' of Count expects Objects, got Image", "X=Count(box=IMAGE)"),
    (3, 25, "undefined variable 'Y'", "FINAL_RESULT=Result(var=Y)"),
]

FAILING = textwrap.dedent(
    """\
    OBJ0=FaceDet(image=IMAGE)
    IMAGE0=CropBelow(image=IMAGE, box=OBJ0)
    NAME='not_a_real_emoji_name'
    IMAGE1=Emoji(image=IMAGE, object=OBJ0, emoji=NAME)
    FINAL_RESULT=Result(var=IMAGE1)
    """
)

INLINE_BAD = "X=Count(box=IMAGE)\nFINAL_RESULT=Result(var=X)"

CASCADE = ["--backend", "FaceDet=cascade"]

#: where the astronaut's face is in the 512x512 photo (x0, y0, x1, y1), generously
FACE = (170, 60, 270, 170)


def cli(*argv: str | Path) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main([str(a) for a in argv], out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def assert_no_traceback(text: str) -> None:
    assert "Traceback" not in text
    assert "lark" not in text.lower()


def assert_diagnostics(err: str, name: str | Path, diagnostics: list[tuple[int, int, str, str]]) -> None:
    """Every diagnostic is printed as FILE:LINE:COL: message, then its source line and a caret under the column."""
    lines = err.splitlines()
    for line, col, message, source in diagnostics:
        head = f"{name}:{line}:{col}: "
        matches = [i for i, text in enumerate(lines) if text.startswith(head)]
        assert matches, f"no diagnostic at line {line}, col {col} in:\n{err}"
        i = matches[0]
        assert message in lines[i]
        assert lines[i + 1] == f"  {source}"
        assert lines[i + 2] == "  " + " " * (col - 1) + "^"


def script() -> Path:
    bindir = Path(sys.executable).parent
    path = bindir / ("visprog.exe" if os.name == "nt" else "visprog")
    if not path.exists():
        pytest.skip(f"no visprog console script next to {sys.executable}")
    return path


@pytest.fixture(scope="module")
def photo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("photo") / "astronaut.jpg"
    # quality 75: the cascade finds exactly one face (at 90+ it also fires on a patch bottom right)
    PILImage.fromarray(data.astronaut()).save(path, quality=75)
    return path


@pytest.fixture
def good(tmp_path: Path) -> Path:
    path = tmp_path / "good.vp"
    path.write_text(GOOD, encoding="utf-8")
    return path


@pytest.fixture
def bad(tmp_path: Path) -> Path:
    path = tmp_path / "bad.vp"
    path.write_text(BAD, encoding="utf-8")
    return path


# --- check --------------------------------------------------------------------------------------


def test_check_good_file(good: Path) -> None:
    code, out, err = cli("check", good)
    assert code == 0, err
    assert out == f"{good}: ok, 6 steps, inputs IMAGE, result FINAL_RESULT (Image)\n"
    assert err == ""


def test_check_bad_file_prints_every_diagnostic(bad: Path) -> None:
    code, out, err = cli("check", bad)
    assert code == 1
    assert out == ""
    assert err.startswith(f"{bad}:1:6: unknown module 'FaceDett'")
    assert err.endswith(f"{bad}: 3 check errors\n")
    assert_diagnostics(err, bad, BAD_DIAGNOSTICS)
    assert_no_traceback(err)


def test_check_syntax_error(tmp_path: Path) -> None:
    path = tmp_path / "syntax.vp"
    path.write_text("X=Count(box=[])\nY=Crop(image=IMAGE, box=X\n", encoding="utf-8")
    code, _out, err = cli("check", path)
    assert code == 1
    assert err.endswith(f"{path}: 1 syntax error\n")
    assert_diagnostics(err, path, [(2, 26, "missing ')'", "Y=Crop(image=IMAGE, box=X")])
    assert_no_traceback(err)


def test_check_program_from_stdin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(GOOD))
    code, out, err = cli("check", "-")
    assert code == 0, err
    assert out.startswith("<stdin>: ok, 6 steps")

    monkeypatch.setattr(sys, "stdin", io.StringIO(BAD))
    code, out, err = cli("check", "-")
    assert code == 1
    assert_diagnostics(err, "<stdin>", BAD_DIAGNOSTICS)
    assert_no_traceback(err)


def test_check_inline_program_text() -> None:
    code, out, err = cli("check", "N=Count(box=[])\nFINAL_RESULT=Result(var=N)")
    assert code == 0, err
    assert out == "<argument>: ok, 2 steps, inputs none, result FINAL_RESULT (int)\n"

    code, out, err = cli("check", INLINE_BAD)
    assert code == 1
    assert_diagnostics(
        err, "<argument>", [(1, 13, "argument 'box' of Count expects Objects, got Image", "X=Count(box=IMAGE)")]
    )
    assert_no_traceback(err)


def test_error_header_names_stdin_and_inline_programs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(BAD))
    _, _, err = cli("check", "-")
    assert err.startswith("<stdin>:1:6: ") and err.endswith("<stdin>: 3 check errors\n")
    _, _, err = cli("check", INLINE_BAD)
    assert err.startswith("<argument>:1:13: ") and err.endswith("<argument>: 1 check error\n")


def test_check_missing_program_file_is_a_usage_error(tmp_path: Path) -> None:
    code, _out, err = cli("check", tmp_path / "nope.vp")
    assert code == 2
    assert f"no such program file: {tmp_path / 'nope.vp'}" in err


def test_check_warns_about_a_missing_result_step(tmp_path: Path) -> None:
    path = tmp_path / "count.vp"
    path.write_text("OBJ0=FaceDet(IMAGE)\nN=Count(OBJ0)\n", encoding="utf-8")
    code, out, err = cli("check", path)
    assert code == 0, err
    assert out == f"{path}: ok, 2 steps, inputs IMAGE, result N (int)\n"
    assert err == (
        f"{path}:2:1: warning: the program has no result step: the result is the last step's value, N "
        "(end the program with FINAL_RESULT=Result(var=N) to say so)\n"
        "  N=Count(OBJ0)\n"
        "  ^\n"
    )


# --- fmt --------------------------------------------------------------------------------------

NOT_CANONICAL = "# faces\nOBJ0 = FACEDET(IMAGE)   # find them\nN=count(box=OBJ0)\nFINAL_RESULT=Result(N)\n"
CANONICAL = "# faces\nOBJ0=FaceDet(image=IMAGE)  # find them\nN=Count(box=OBJ0)\nFINAL_RESULT=Result(var=N)\n"


def test_fmt_prints_the_canonical_form(tmp_path: Path) -> None:
    path = tmp_path / "faces.vp"
    path.write_text(NOT_CANONICAL, encoding="utf-8")
    assert cli("fmt", path) == (0, CANONICAL, "")
    assert path.read_text(encoding="utf-8") == NOT_CANONICAL  # printed, not written


def test_fmt_check_says_what_would_change(tmp_path: Path) -> None:
    path = tmp_path / "faces.vp"
    path.write_text(NOT_CANONICAL, encoding="utf-8")
    code, out, err = cli("fmt", "--check", path)
    assert code == 1, err
    removed = [line for line in out.splitlines() if line.startswith("-") and not line.startswith("---")]
    added = [line for line in out.splitlines() if line.startswith("+") and not line.startswith("+++")]
    assert removed == ["-OBJ0 = FACEDET(IMAGE)   # find them", "-N=count(box=OBJ0)", "-FINAL_RESULT=Result(N)"]
    assert added == ["+OBJ0=FaceDet(image=IMAGE)  # find them", "+N=Count(box=OBJ0)", "+FINAL_RESULT=Result(var=N)"]
    assert " # faces\n" in out  # context
    assert out.endswith(f"{path}: would be reformatted (visprog fmt prints the canonical form)\n")
    path.write_text(CANONICAL, encoding="utf-8")
    assert cli("fmt", "--check", path) == (0, f"{path}: already canonical\n", "")


def test_fmt_of_a_program_that_does_not_parse_prints_the_syntax_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.vp"
    path.write_text("X=Count(box=OBJ0\n", encoding="utf-8")
    code, out, err = cli("fmt", path)
    assert code == 1 and out == ""
    assert err.startswith(f"{path}:1:17: missing ')' at the end of the step\n")
    assert err.endswith(f"{path}: 1 syntax error\n")


def test_argparse_usage_errors_exit_2() -> None:
    with pytest.raises(SystemExit) as info:
        main(["frobnicate"], out=io.StringIO(), err=io.StringIO())
    assert info.value.code == 2


# --- graph ------------------------------------------------------------------------------------


def test_graph_mermaid_and_dot(good: Path) -> None:
    code, out, err = cli("graph", good)
    assert code == 0, err
    assert out.startswith("flowchart TD")
    for node in ["OBJ0 = FaceDet", "IMAGE0 = CropBelow", "IMAGE1 = ColorPop", "N = Count", "ANSWER = Eval"]:
        assert node in out
    assert "s0 -->|OBJ0| s1" in out
    assert "s3 -->|N| s4" in out  # Eval depends on the variable its expression names

    code, out, err = cli("graph", "--dot", good)
    assert code == 0, err
    assert out.startswith("digraph")
    assert '"s0" -> "s2" [label="OBJ0"];' in out
    assert out.rstrip().endswith("}")


def test_graph_of_a_bad_program_fails_like_check(bad: Path) -> None:
    code, out, err = cli("graph", bad)
    assert code == 1
    assert out == ""
    assert_diagnostics(err, bad, BAD_DIAGNOSTICS)


# --- modules ----------------------------------------------------------------------------------


def test_modules_lists_builtins_with_signatures_and_descriptions() -> None:
    code, out, err = cli("modules")
    assert code == 0, err
    for name in BUILTINS:
        assert f"\n{name}(" in "\n" + out, name
    assert "Crop(image: Image, box: Objects) -> Image\n" in out
    assert "CropRightOf(image: Image, box: Objects) -> Image\n" in out
    assert "Emoji(image: Image, object: Objects, emoji: str) -> Image\n" in out
    assert "FaceDet(image: Image) -> Objects\n" in out  # the Context parameter is not shown
    assert "Count(box: Objects) -> int\n    Count the objects.\n    box: the objects to count.\n" in out
    assert "aliases: CROP_RIGHTOF" in out
    assert "suggested for: CROP_TOPOF, CROP_TOP" in out
    assert "emoji: the emoji's CLDR name" in out and "(a literal value is checked before the program runs)" in out
    assert "from plugin 'image_ops' of visprog" in out


def test_modules_json() -> None:
    code, out, err = cli("modules", "--json")
    assert code == 0, err
    modules = {m["name"]: m for m in json.loads(out)}
    assert set(BUILTINS) <= set(modules)
    for name in BUILTINS:
        m = modules[name]
        assert m["summary"]
        assert isinstance(m["params"], list)
        for p in m["params"]:
            assert set(p) == {"name", "type", "required", "description"}
            assert p["description"]
    emoji = modules["Emoji"]["params"]
    assert [(p["name"], p["type"], p["required"]) for p in emoji] == [
        ("image", "Image", True),
        ("object", "Objects", True),
        ("emoji", "str", True),
    ]
    assert "smiling_face_with_sunglasses" in modules["Emoji"]["params"][2]["description"]
    assert [p["name"] for p in modules["FaceDet"]["params"]] == ["image"]
    assert modules["FaceDet"]["returns"] == "Objects"
    assert modules["Count"]["returns"] == "int"
    assert "CROP_RIGHTOF" in modules["CropRightOf"]["aliases"]
    assert modules["CropBelow"]["suggest_for"][0] == "CROP_BOTTOM" and modules["Count"]["suggest_for"] == []
    assert modules["Eval"]["params"][0]["type"] == "expression"
    assert modules["Crop"]["source"] == "plugin 'image_ops' of visprog"


# --- exec -------------------------------------------------------------------------------------


def test_exec_real_program_on_a_photo(good: Path, photo: Path, tmp_path: Path) -> None:
    outdir = tmp_path / "out"
    code, out, err = cli("exec", good, "--image", f"IMAGE={photo}", *CASCADE, "-o", outdir)
    assert code == 0, err
    assert out == "FINAL_RESULT: Image 512x512\n"  # the answer alone; the trace and "wrote ..." on stderr
    assert "OBJ0 = FaceDet(image=IMAGE [512x512])\n         -> Objects (1)" in err
    assert "N = Count(box=OBJ0 [Objects (1)])\n         -> int 1" in err
    assert "-> str 'one face'" in err
    assert "\nresult: FINAL_RESULT (line 7), total " in err  # named, its value shown once (on its step's line)

    result_path = outdir / "result.png"
    steps = sorted(p.name for p in (outdir / "steps").iterdir())
    assert {"03_IMAGE0.png", "04_IMAGE1.png"} <= set(steps)
    assert not [s for s in steps if s.split("_", 1)[1] in ("OBJ0.png", "N.png", "ANSWER.png")]  # not images
    for name in steps:
        assert f"wrote {outdir / 'steps' / name}" in err
    assert f"wrote {result_path}" in err

    original = np.asarray(PILImage.open(photo).convert("RGB")).astype(int)
    result = np.asarray(PILImage.open(result_path)).astype(int)
    assert result.shape == original.shape
    # ColorPop: grey outside the face, the original colours on the face
    corner = result[-100:, -100:]
    assert (corner[..., 0] == corner[..., 1]).all() and (corner[..., 1] == corner[..., 2]).all()
    cx, cy = (FACE[0] + FACE[2]) // 2, (FACE[1] + FACE[3]) // 2
    np.testing.assert_array_equal(
        result[cy - 10 : cy + 10, cx - 10 : cx + 10], original[cy - 10 : cy + 10, cx - 10 : cx + 10]
    )
    assert np.abs(result[..., 0] - result[..., 2]).max() > 30  # some colour is left
    # CropBelow: full width, from the face's centre down
    below = PILImage.open(outdir / "steps" / "03_IMAGE0.png")
    assert below.width == 512
    assert 512 - FACE[3] < below.height < 512 - FACE[1]
    with PILImage.open(outdir / "steps" / "04_IMAGE1.png") as step:
        np.testing.assert_array_equal(np.asarray(step), result)


def test_exec_image_options(photo: Path, tmp_path: Path) -> None:
    original = np.asarray(PILImage.open(photo).convert("RGB"))

    outdir = tmp_path / "named"
    code, out, err = cli("exec", "FINAL_RESULT=Result(var=PHOTO)", "--image", f"PHOTO={photo}", "-o", outdir, "-q")
    assert code == 0, err
    assert (out, err) == (f"{outdir / 'result.png'}\n", "")  # -q: the answer alone, an image as its file
    np.testing.assert_array_equal(np.asarray(PILImage.open(outdir / "result.png")), original)

    outdir = tmp_path / "bare"
    program = "X=CropRightOf(image=IMAGE, box=[])\nFINAL_RESULT=Result(var=X)"
    code, out, err = cli("exec", program, "-i", str(photo), "-o", outdir)
    assert code == 0, err
    assert out == "FINAL_RESULT: Image 256x512\n"
    np.testing.assert_array_equal(np.asarray(PILImage.open(outdir / "result.png")), original[:, 256:])

    code, out, err = cli("exec", program, "--image", f"LEFT={photo}")
    assert code == 1
    assert "IMAGE" in err

    code, out, err = cli("exec", program, "--image", f"={photo}")
    assert code == 2
    assert "--image expects NAME=VALUE" in err


def test_exec_missing_image_file(good: Path, tmp_path: Path) -> None:
    missing = tmp_path / "no_such_photo.jpg"
    code, _out, err = cli("exec", good, "--image", f"IMAGE={missing}", *CASCADE)
    assert code == 1
    assert str(missing) in err and "no such file" in err
    assert_no_traceback(err)


def test_exec_non_image_file(good: Path) -> None:
    code, _out, err = cli("exec", good, "--image", str(good), *CASCADE)
    assert code == 1
    assert f"{good}: not an image" in err
    assert_no_traceback(err)


def test_exec_bad_program_prints_diagnostics(bad: Path, photo: Path) -> None:
    code, _out, err = cli("exec", bad, "--image", str(photo))
    assert code == 1
    assert_diagnostics(err, bad, BAD_DIAGNOSTICS)
    assert_no_traceback(err)


def test_exec_failing_step_prints_partial_trace(tmp_path: Path, photo: Path) -> None:
    path = tmp_path / "failing.vp"
    path.write_text(FAILING, encoding="utf-8")
    outdir = tmp_path / "out"
    code, out, err = cli("exec", path, "--image", str(photo), *CASCADE, "-o", outdir)
    assert code == 1
    assert out == ""  # no answer
    # the steps before the failure, with their outputs
    assert "line  1  OBJ0 = FaceDet(image=IMAGE [512x512])\n         -> Objects (1)" in err
    assert "line  2  IMAGE0 = CropBelow(" in err
    assert "run failed at line 4 (Emoji); not run: line 5 (it needs line 4)" in err
    assert "line  4  IMAGE1 = Emoji(" in err
    assert "FAILED: ValueError: unknown emoji 'not_a_real_emoji_name'" in err
    assert "FINAL_RESULT" not in err.replace(f"wrote {outdir}", "").replace("IMAGE1=Emoji", "")
    assert f"wrote {outdir / 'steps' / '02_IMAGE0.png'}" in err
    # the failing line and module
    assert "line 4, Emoji (step IMAGE1) failed: ValueError: unknown emoji 'not_a_real_emoji_name'" in err
    assert "IMAGE1=Emoji(image=IMAGE, object=OBJ0, emoji=NAME)" in err
    assert_no_traceback(err)
    # the image steps that ran are still written; there is no result
    assert (outdir / "steps" / "02_IMAGE0.png").is_file()
    assert not (outdir / "result.png").exists()


def test_unknown_backend_module_is_a_usage_error(good: Path, photo: Path) -> None:
    code, out, err = cli("exec", good, "--image", str(photo), "--backend", "FaceDe=cascade")
    assert code == 2
    assert out == ""  # nothing ran
    assert "--backend: unknown module 'FaceDe' (did you mean 'FaceDet'?)" in err
    code, _out, err = cli("exec", good, "--image", str(photo), "--backend", "FaceDet")
    assert code == 2
    assert "--backend expects NAME=VALUE" in err


def test_unknown_backend_name_is_a_usage_error(good: Path, photo: Path) -> None:
    code, _out, err = cli("exec", good, "--image", str(photo), "--backend", "facedet=nope")
    assert code == 2
    assert "FaceDet has no backend 'nope'; choose one of yunet, cascade" in err


# --- demo -------------------------------------------------------------------------------------


def test_demo_hides_the_face_offline(tmp_path: Path) -> None:
    code, out, err = cli("demo", "-o", tmp_path)
    assert code == 0, err
    assert out == "FINAL_RESULT: Image 512x512\n"
    assert "program:\n# Hide the astronaut's face" in err
    assert "Emoji(image=IMAGE, object=OBJ0, emoji='smiling_face_with_sunglasses')" in err
    result = np.asarray(PILImage.open(tmp_path / "result.png").convert("RGB"))
    original = data.astronaut()
    assert result.shape == original.shape
    x0, y0, x1, y1 = FACE
    changed = np.any(result[y0:y1, x0:x1] != original[y0:y1, x0:x1], axis=-1)
    assert changed.mean() > 0.5
    np.testing.assert_array_equal(result[-100:, -100:], original[-100:, -100:])
    np.testing.assert_array_equal(result[:40, :], original[:40, :])
    assert (tmp_path / "steps").is_dir()


# --- real processes ---------------------------------------------------------------------------


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    return env


def test_python_dash_m_visprog(bad: Path, good: Path, tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "visprog", "check", str(bad)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=_env(),
        timeout=120,
    )
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert_diagnostics(proc.stderr, bad, BAD_DIAGNOSTICS)
    assert_no_traceback(proc.stderr)

    proc = subprocess.run(
        [sys.executable, "-m", "visprog", "graph", "-"],
        input=GOOD,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=_env(),
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("flowchart TD")


def test_console_script_exec(photo: Path, tmp_path: Path) -> None:
    program = tmp_path / "emoji.vp"
    program.write_text(
        "OBJ0=FaceDet(image=IMAGE)\nIMAGE0=Emoji(image=IMAGE, object=OBJ0, emoji='grinning_face')\n"
        "FINAL_RESULT=Result(var=IMAGE0)\n",
        encoding="utf-8",
    )
    outdir = tmp_path / "out"
    proc = subprocess.run(
        [str(script()), "exec", str(program), "--image", str(photo), *CASCADE, "-o", str(outdir)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=_env(),
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "FINAL_RESULT: Image 512x512" in proc.stdout
    result = np.asarray(PILImage.open(outdir / "result.png").convert("RGB"))
    original = np.asarray(PILImage.open(photo).convert("RGB"))
    x0, y0, x1, y1 = FACE
    assert np.any(result[y0:y1, x0:x1] != original[y0:y1, x0:x1], axis=-1).mean() > 0.5
    np.testing.assert_array_equal(result[-100:, -100:], original[-100:, -100:])

    proc = subprocess.run(
        [str(script()), "exec", str(program), "--image", str(photo), "--backend", "Emojj=x"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=_env(),
        timeout=120,
    )
    assert proc.returncode == 2
    assert "did you mean 'Emoji'?" in proc.stderr


NO_TORCH_SCRIPT = """\
import io, json, sys
import visprog
from visprog.apps.cli import main

program = sys.argv[1]
codes = [
    main(["check", program], out=io.StringIO(), err=io.StringIO()),
    main(["modules"], out=io.StringIO(), err=io.StringIO()),
    main(["modules", "--json"], out=io.StringIO(), err=io.StringIO()),
    main(["graph", program], out=io.StringIO(), err=io.StringIO()),
]
imported = {name: name in sys.modules for name in ("torch", "transformers", "numpy")}
import importlib.util
stubs = {name: importlib.util.find_spec(name).origin for name in ("torch", "transformers")}
print(json.dumps({"codes": codes, "imported": imported, "stubs": stubs}))
"""


def test_check_and_modules_import_no_torch(good: Path, tmp_path: Path) -> None:
    """Importable stand-ins for torch and transformers: any import of them would show in sys.modules.

    numpy is not needed either (it is most of the start-up time when it is imported).
    """
    stubs = tmp_path / "stubs"
    for name in ("torch", "transformers"):
        (stubs / name).mkdir(parents=True)
        (stubs / name / "__init__.py").write_text("", encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, "-c", NO_TORCH_SCRIPT, str(good)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**_env(), "PYTHONPATH": str(stubs)},
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["codes"] == [0, 0, 0, 0]
    assert all(str(stubs) in origin for origin in report["stubs"].values())  # an import would have succeeded
    assert report["imported"] == {"torch": False, "transformers": False, "numpy": False}


def test_trace_option_writes_a_self_contained_html_page_also_for_a_failed_run(tmp_path: Path) -> None:
    photo = tmp_path / "astronaut.png"
    PILImage.fromarray(data.astronaut()).save(photo)
    page = tmp_path / "trace.html"
    program = "OBJ0=FaceDet(image=IMAGE)\nN=Count(box=OBJ0)\nFINAL_RESULT=Result(var=N)"
    code, out, err = cli("exec", program, "--image", photo, "--backend", "FaceDet=cascade", "--trace", page)
    assert code == 0 and f"wrote {page}" in err and out == "FINAL_RESULT: 1\n"
    html = page.read_text(encoding="utf-8")
    assert html.count('class="step ') == 3 and re.search(r"data:image/(png|jpeg);base64,", html)
    failing = "OBJ0=FaceDet(image=IMAGE)\nX=Eval(expr='1 / 0')\nFINAL_RESULT=Result(var=X)"
    code, out, err = cli("exec", failing, "--image", photo, "--backend", "FaceDet=cascade", "--trace", page)
    assert code == 1 and f"wrote {page}" in err and out == ""
    html = page.read_text(encoding="utf-8")
    assert 'data-status="failed"' in html and "division by zero" in html and 'data-module="FaceDet"' in html


def test_serve_starts_the_web_app_with_the_command_line_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    import visprog.apps.webapp

    seen: dict[str, object] = {}

    def fake_serve(host: str, port: int, **kwargs: object) -> None:
        seen.update(host=host, port=port, **kwargs)

    monkeypatch.setattr(visprog.apps.webapp, "serve", fake_serve)
    code, out, _ = cli("serve", "--port", "7999", "--backend", "FaceDet=cascade", "--max-upload-mb", "5")
    assert code == 0 and "http://127.0.0.1:7999" in out
    assert seen["host"] == "127.0.0.1" and seen["port"] == 7999 and seen["max_upload_bytes"] == 5_000_000
    runtime = seen["runtime"]
    assert runtime.options("FaceDet") == {"backend": "cascade"}  # type: ignore[attr-defined]
    assert callable(seen["planner_factory"])


def test_eval_command_scores_a_data_set_and_resumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.llm_server import serve_scripted

    PILImage.fromarray(data.astronaut()).save(tmp_path / "astronaut.jpg")
    PILImage.fromarray(data.coffee()).save(tmp_path / "coffee.jpg")
    items = [
        {"id": "a", "image": "astronaut.jpg", "question": "How many faces are there?", "answer": "one"},
        {"id": "b", "image": "coffee.jpg", "question": "How many faces are there?", "answer": "1"},
        {"id": "c", "image": "coffee.jpg", "question": "How many faces are there?", "answer": "0"},
    ]
    dataset = tmp_path / "faces.jsonl"
    dataset.write_text("".join(json.dumps(i) + "\n" for i in items))
    count = "OBJ0=FaceDet(image=IMAGE)\nANSWER0=Count(box=OBJ0)\nFINAL_RESULT=Result(var=ANSWER0)"
    results = tmp_path / "results.jsonl"
    monkeypatch.setenv("VISPROG_CACHE_DIR", str(tmp_path / "cache"))
    with serve_scripted() as server:
        server.script([count, count, count])
        argv = ["eval", dataset, "--task", "gqa", "-o", results, "--base-url", server.url, "--model", "tiny"]
        code, out, err = cli(*argv, "--backend", "FaceDet=cascade", "--no-cache", "-q", "--traces", tmp_path / "pages")
        assert code == 0, err
        records = [json.loads(line) for line in results.read_text().splitlines()]
        assert [(r["id"], r["correct"], r["failure"]) for r in records] == [
            ("a", True, None),
            ("b", False, "wrong_answer"),
            ("c", True, None),
        ]
        # the wrong answer's trace page, to see why: the program, the faces found, the count
        assert [r["trace_file"] for r in records] == [None, str(tmp_path / "pages" / "b.html"), None]
        page = (tmp_path / "pages" / "b.html").read_text(encoding="utf-8")
        assert "How many faces are there?" in page and 'data-module="FaceDet"' in page and 'data-module="Count"' in page
        assert sorted(p.name for p in (tmp_path / "pages").iterdir()) == ["b.html"]
        assert f"trace pages in {tmp_path / 'pages'}" in err and f"wrote {results}" in err
        assert "trace pages in" not in out and "wrote" not in out  # stdout: the table alone
        summary = json.loads((tmp_path / "results.summary.json").read_text())
        assert summary["n"] == 3 and summary["accuracy"] == pytest.approx(2 / 3)
        # --limit N: only the first N items
        first = tmp_path / "first.jsonl"
        server.script([count])
        limited = ["eval", dataset, "--task", "gqa", "-o", first, "--base-url", server.url, "--model", "tiny"]
        code, _, err = cli(*limited, "--limit", "1", "--backend", "FaceDet=cascade", "--no-cache", "-q")
        assert code == 0, err
        assert [json.loads(line)["id"] for line in first.read_text().splitlines()] == ["a"]
        code, _, err = cli(*limited, "--limit", "0", "-q")
        assert code != 0 and "--limit must be at least 1, got 0" in err
        code, _, err = cli(*limited, "--all-traces", "-q")
        assert code != 0 and "--all-traces needs --traces DIR" in err
        # a second run finds every item done and asks the LLM nothing
        code, _, _ = cli(*argv, "--backend", "FaceDet=cascade", "--no-cache", "-q")
        assert code == 0 and len(server.requests) == 4
        # the same data on local Ray actors gives the same records
        pytest.importorskip("ray")
        server.script([count, count, count])
        on_ray = tmp_path / "on_ray.jsonl"
        argv = ["eval", dataset, "--task", "gqa", "-o", on_ray, "--base-url", server.url, "--model", "tiny"]
        ray_flags = ["--engine", "ray", "--workers", "1", "--backend", "FaceDet=cascade", "--no-cache", "-q"]
        monkeypatch.chdir(tmp_path)  # a relative --traces folder: the actors write where the driver means
        code, _, err = cli(*argv, *ray_flags, "--traces", "ray-pages", "--all-traces")
        assert code == 0, err
        assert sorted(p.name for p in (tmp_path / "ray-pages").iterdir()) == ["a.html", "b.html", "c.html"]
        ray_records = [json.loads(line) for line in on_ray.read_text().splitlines()]
        assert [(r["id"], r["correct"], r["failure"], r["answer"]) for r in ray_records] == [
            (r["id"], r["correct"], r["failure"], r["answer"]) for r in records
        ]


def test_eval_on_edit_instructions_saves_the_images_and_scores_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.llm_server import serve_scripted

    PILImage.fromarray(data.astronaut()).resize((256, 256)).save(tmp_path / "astronaut.png")
    items = [
        {"id": "hide/face 1", "image": "astronaut.png", "instruction": "Hide the face with a smiley"},
        {"id": "teleport", "image": "astronaut.png", "instruction": "Send her to the moon"},
    ]
    dataset = tmp_path / "edits.jsonl"
    dataset.write_text("".join(json.dumps(i) + "\n" for i in items))
    smiley = (
        "OBJ0=FaceDet(image=IMAGE)\nIMAGE0=Emoji(image=IMAGE, object=OBJ0, emoji='smiling_face')\n"
        "FINAL_RESULT=Result(var=IMAGE0)"
    )
    unknown = "IMAGE0=Teleport(image=IMAGE, where='moon')\nFINAL_RESULT=Result(var=IMAGE0)"
    results = tmp_path / "edits-results.jsonl"
    monkeypatch.setenv("VISPROG_CACHE_DIR", str(tmp_path / "cache"))
    with serve_scripted() as server:
        server.script([smiley, unknown])
        argv = ["eval", dataset, "--task", "edit", "-o", results, "--base-url", server.url, "--model", "tiny"]
        code, _, err = cli(*argv, "--backend", "FaceDet=cascade", "--no-cache", "--repair", "0", "-q")
    assert code == 0, err
    first, second = (json.loads(line) for line in results.read_text().splitlines())
    assert first["correct"] is None and first["failure"] is None and first["answer"] == "<image 256x256>"
    saved = Path(first["output_file"])
    assert saved.parent == tmp_path / "edits-results.outputs" and saved.name.startswith("hide_face_1-")
    with PILImage.open(saved) as edited, PILImage.open(tmp_path / "astronaut.png") as original:
        assert edited.size == (256, 256)
        assert (np.asarray(edited.convert("RGB")) != np.asarray(original.convert("RGB"))).any()
    assert second["failure"] == "plan_check" and second["correct"] is None and second["output_file"] is None
    summary = json.loads((tmp_path / "edits-results.summary.json").read_text())
    assert (summary["n"], summary["scored"], summary["correct"], summary["ran"]) == (2, 0, 0, 1)
    assert f"image answers in {tmp_path / 'edits-results.outputs'}" in err
    # Ray actors save the images too, under the folder given (relative to the driver's working folder)
    pytest.importorskip("ray")
    monkeypatch.chdir(tmp_path)
    with serve_scripted() as server:
        server.script([smiley, unknown])
        argv = ["eval", dataset, "--task", "edit", "-o", "on_ray.jsonl", "--base-url", server.url, "--model", "tiny"]
        flags = ["--engine", "ray", "--workers", "1", "--outputs", "ray-images", "--backend", "FaceDet=cascade"]
        code, _, err = cli(*argv, *flags, "--no-cache", "--repair", "0", "-q")
    assert code == 0, err
    on_ray = json.loads((tmp_path / "on_ray.jsonl").read_text().splitlines()[0])
    assert Path(on_ray["output_file"]) == (tmp_path / "ray-images" / saved.name).absolute()
    with PILImage.open(on_ray["output_file"]) as from_ray, PILImage.open(saved) as local:
        assert (np.asarray(from_ray) == np.asarray(local)).all()


def test_eval_command_stops_clearly_on_wrong_data_and_on_an_llm_outage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.llm_server import Reply, serve_scripted

    images = tmp_path / "images"
    images.mkdir()
    PILImage.fromarray(data.astronaut()).save(images / "astronaut.jpg")
    rows = [{"id": f"q{i}", "image": "astronaut.jpg", "question": f"Faces {i}?", "answer": "1"} for i in range(3)]
    dataset = tmp_path / "faces.jsonl"
    dataset.write_text("".join(json.dumps(r) + "\n" for r in rows))
    count = "OBJ0=FaceDet(image=IMAGE)\nANSWER0=Count(box=OBJ0)\nFINAL_RESULT=Result(var=ANSWER0)"
    results = tmp_path / "results.jsonl"
    monkeypatch.setenv("VISPROG_CACHE_DIR", str(tmp_path / "cache"))
    with serve_scripted() as server:
        argv = ["eval", dataset, "-o", results, "--base-url", server.url, "--model", "tiny", "--no-cache", "-q"]
        # a GQA-style file with --task nlvr: one clear error, nothing planned
        code, _, err = cli(*argv, "--task", "nlvr")
        expected = f"{dataset}:1: item 'q0' has one image (IMAGE) but task nlvr needs two images (LEFT and RIGHT)"
        assert code == 1 and expected in err
        # the images are not next to the data file: the error says to pass --images
        code, _, err = cli(*argv, "--task", "gqa")
        assert code == 1 and "none of the 3 items' images were found" in err and "pass --images DIR" in err
        assert server.requests == [] and not results.exists()
        # the LLM answers the first item, then fails: the first item's record is kept, the run stops
        server.script([count, Reply.error(401, "Incorrect API key provided")])  # not retried
        flags = ["--task", "gqa", "--images", images, "--backend", "FaceDet=cascade", "--batch-size", "2"]
        code, _, err = cli(*argv, *flags)
        assert code == 1 and "error: the LLM stopped answering at item 'q1'" in err and "HTTP 401" in err
        assert "run the same command again to resume" in err and "Traceback" not in err
        assert [json.loads(line)["id"] for line in results.read_text().splitlines()] == ["q0"]
        # the same command resumes; the table has this run's wall time and throughput
        server.script([count, count])
        code, out, err = cli(*argv, *flags)
        assert code == 0, err
        assert re.search(r"wall time\s+\d+\.\d s for the 2 item\(s\) evaluated now", out)
        assert re.search(r"throughput\s+\d+\.\d\d items/s", out)
        assert [json.loads(line)["id"] for line in results.read_text().splitlines()] == ["q0", "q1", "q2"]


def test_exec_without_its_image_says_how_to_give_it(tmp_path: Path) -> None:
    program = tmp_path / "hide.vp"
    program.write_text("OBJ0=FaceDet(image=IMAGE)\nFINAL_RESULT=Result(var=OBJ0)\n")
    code, _, err = cli("exec", program)
    assert code == 1
    assert "the program reads the input IMAGE, which was not given (given: none)" in err
    assert "hint: give the program its images with --image NAME=PATH (NAME defaults to IMAGE)" in err
    assert "did you mean" not in err


def test_an_input_given_twice_is_a_usage_error(tmp_path: Path) -> None:
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    for path in (a, b):
        PILImage.new("RGB", (8, 8)).save(path)
    code, _, err = cli("exec", "RESULT=IMAGE", "--image", a, "--image", f"IMAGE={b}")
    assert code == 2 and f"--image IMAGE is given twice ({a} and {b})" in err
    code, _, _ = cli("exec", "RESULT=IMAGE", "--image", a, "--image", f"IMAGE={a}")  # the same twice is fine
    assert code == 0


def test_edit_output_into_a_folder_and_a_result_that_is_no_image(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.llm_server import serve_scripted

    photo = tmp_path / "astronaut.png"
    PILImage.fromarray(data.astronaut()).resize((128, 128)).save(photo)
    blur = "IMAGE0=BgBlur(image=IMAGE, object=[])\nFINAL_RESULT=Result(var=IMAGE0)"
    answer = "ANSWER0=Eval(expr=\"'no edit'\")\nFINAL_RESULT=Result(var=ANSWER0)"
    folder = tmp_path / "edits"
    folder.mkdir()
    monkeypatch.setenv("VISPROG_CACHE_DIR", str(tmp_path / "cache"))
    with serve_scripted() as server:
        server.script([blur, answer])
        common = ["--base-url", server.url, "--model", "tiny", "--no-cache", "-q", "--repair", "0"]
        code, out, err = cli("edit", photo, "Blur the background", "-o", f"{folder}/", *common)
        assert code == 0, err
        assert out == f"{folder / 'result.png'}\n" and (folder / "result.png").is_file()  # -q: the file written
        code, out, err = cli("edit", photo, "Say no", "-o", tmp_path / "edited.png", *common)
    assert code == 0, err
    assert out == "no edit\n"
    assert f"the result is not an image (no edit), so nothing was written to {tmp_path / 'edited.png'}" in err
    assert not (tmp_path / "edited.png").exists()


def test_task_commands_come_from_the_task_files_and_samples_show_progress_from_events(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.llm_server import serve_scripted
    from visprog.planner.tasks import tasks

    with pytest.raises(SystemExit):
        main(["--help"])
    listed = " ".join(capsys.readouterr().out.split())
    for task in tasks().values():
        assert f"{task.command} {task.description} ({task.name})" in listed
    photo = tmp_path / "astronaut.png"
    PILImage.fromarray(data.astronaut()).save(photo)
    yes = "OBJ0=FaceDet(image=IMAGE)\nANSWER0=Count(box=OBJ0)\nFINAL_RESULT=Result(var=ANSWER0)"
    no = "OBJ0=FaceDet(image=IMAGE)\nANSWER0=Eval(expr='0')\nFINAL_RESULT=Result(var=ANSWER0)"
    with serve_scripted() as server:
        server.script([yes, no, yes])
        monkeypatch.setenv("OPENAI_BASE_URL", server.url)
        monkeypatch.setenv("VISPROG_LLM_MODEL", "tiny")
        code, out, err = cli("ask", photo, "How many faces?", "--samples", "3", "--no-cache", *CASCADE)
    assert code == 0, err
    assert out == "result: 1\n"
    assert "agreement: 67% of 3 valid sample(s) out of 3" in err
    # the planner's progress, one line per event
    assert [line for line in err.splitlines() if line.startswith("sample ")] == [
        "sample 1 of 3: asking the LLM",
        "sample 2 of 3: asking the LLM",
        "sample 3 of 3: asking the LLM",
    ]


def test_exec_warns_about_a_missing_result_step_and_returns_the_last_value(photo: Path, tmp_path: Path) -> None:
    path = tmp_path / "count.vp"
    path.write_text("OBJ0=FaceDet(IMAGE)\nN=Count(OBJ0)\n", encoding="utf-8")
    code, out, err = cli("exec", path, "--image", f"IMAGE={photo}", *CASCADE, "-q")
    assert code == 0, err
    assert f"{path}:2:1: warning: the program has no result step" in err
    assert out == "1\n"
