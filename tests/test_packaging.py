"""The wheel: what it contains, and that it works installed on its own, away from the source tree.

The wheel is built offline (``python -m build --no-isolation``) from a copy of
the source tree, so the build leaves no ``build/`` or ``*.egg-info`` behind in
the repository (an ``egg-info`` at the repository root would shadow the
installed distribution's metadata whenever the root is on ``sys.path``).
"""

from __future__ import annotations

import configparser
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MODULE_FILES = sorted(p.name for p in (ROOT / "modules").glob("*.py"))
# every file of modules/ that declares modules (@module) is a family with its own entry point; the others
# (backends on optional packages, helpers) are imported by the families
FAMILIES = sorted(
    Path(name).stem
    for name in MODULE_FILES
    if not name.startswith("_") and re.search(r"^@module\b", (ROOT / "modules" / name).read_text(), re.M)
)

IGNORED = shutil.ignore_patterns(
    ".git",
    ".venv",
    "build",
    "dist",
    "*.egg-info",
    "__pycache__",
    "*.pyc",
    ".pytest_cache",
    ".mypy_cache",
    ".ruff_cache",
    ".hypothesis",
    "out",
    "notebooks",
)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    for name in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP"):
        env.pop(name, None)
    env["PYTHONNOUSERSITE"] = "1"
    return env


def _run(cmd: list[str | Path], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # --no-isolation builds with the setuptools of this environment; PEP 639 `license = "MIT"` needs 77+.
    pytest.importorskip("setuptools", minversion="77", reason="an offline wheel build needs setuptools>=77 here")
    pytest.importorskip("build")
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    shutil.copytree(ROOT, src, ignore=IGNORED)
    dist = tmp / "dist"
    _run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", dist, src], cwd=tmp, timeout=300)
    wheels = list(dist.glob("visprog-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def test_wheel_contents(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/entry_points.txt"))
        entry_points = zf.read(f"{info}/entry_points.txt").decode()
        metadata = zf.read(f"{info}/METADATA").decode()
    for name in [
        "visprog/__init__.py",
        "visprog/__main__.py",
        "visprog/apps/cli.py",
        "visprog/apps/webapp.css",
        "visprog/language/grammar.lark",
        "visprog/language/expr.lark",
        "visprog/presentation/fonts/DejaVuSans.ttf",
        "visprog/presentation/trace.css",
        "visprog/py.typed",
        "visprog/modules/image_ops.py",
        # the planner's prompt sets ship as package data (importlib.resources.files("visprog.prompts"))
        "visprog/prompts/gqa.toml",
        "visprog/prompts/nlvr.toml",
        "visprog/prompts/edit.toml",
        "visprog/prompts/tag.toml",
    ]:
        assert name in names, name
    assert MODULE_FILES and "__init__.py" in MODULE_FILES
    for name in MODULE_FILES:
        assert f"visprog/modules/{name}" in names, name
    for path in (ROOT / "visprog").rglob("*.py"):  # every layer's package ships
        relative = path.relative_to(ROOT).as_posix()
        assert relative in names, relative
    top = {n.split("/")[0] for n in names}
    assert "modules" not in top
    assert "tests" not in top
    assert top == {"visprog", info}
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    assert "Name: visprog\n" in metadata

    parser = configparser.ConfigParser(delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(entry_points)
    group = dict(parser["visprog.modules"])
    assert sorted(group) == FAMILIES
    assert group == {family: f"visprog.modules.{family}" for family in FAMILIES}
    assert dict(parser["console_scripts"]) == {"visprog": "visprog.apps.cli:main"}


CHECK_PROGRAM = textwrap.dedent(
    """\
    OBJ0=FaceDet(image=IMAGE)
    IMAGE0=Tag(image=IMAGE, object=OBJ0)
    N=Count(box=OBJ0)
    ANSWER=Eval(expr="'yes' if {N} > 0 else 'no'")
    FINAL_RESULT=Result(var=IMAGE0)
    """
)

PROBE = textwrap.dedent(
    """\
    import importlib.resources, importlib.util, json, sys
    import visprog, visprog.modules.image_ops
    from visprog.running.plugins import default_registry
    font = importlib.resources.files("visprog.presentation") / "fonts" / "DejaVuSans.ttf"
    print(json.dumps({
        "visprog": visprog.__file__,
        "image_ops": visprog.modules.image_ops.__file__,
        "modules": importlib.util.find_spec("modules") is not None,
        "grammar": (importlib.resources.files("visprog.language") / "grammar.lark").is_file(),
        "font": len(font.read_bytes()),
        "sources": sorted({s.source for s in default_registry()}),
        "version": visprog.__version__,
    }))
    """
)


def test_installed_wheel_works_outside_the_source_tree(wheel: Path, tmp_path: Path) -> None:
    import json

    import numpy as np
    from PIL import Image as PILImage
    from skimage import data

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=tmp_path)
    bindir = venv / ("Scripts" if os.name == "nt" else "bin")
    python = bindir / ("python.exe" if os.name == "nt" else "python")
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            python,
            "install",
            "--no-index",
            "--no-deps",
            "--find-links",
            wheel.parent,
            wheel,
        ],
        cwd=tmp_path,
    )
    # The wheel's dependencies come from this environment, after the new venv's own site-packages.
    # A plain path line in a .pth appends the folder without running the .pth files in it, so the
    # editable install's import hook there is not installed.
    new_site = Path(
        _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=tmp_path).stdout.strip()
    )
    our_site = sysconfig.get_paths()["purelib"]
    (new_site / "zz_visprog_test_deps.pth").write_text(our_site + "\n", encoding="utf-8")

    work = tmp_path / "work"
    work.mkdir()
    probe = json.loads(_run([python, "-c", PROBE], cwd=work).stdout)
    assert Path(probe["visprog"]).is_relative_to(venv), probe["visprog"]
    assert Path(probe["image_ops"]).is_relative_to(new_site)
    assert probe["modules"] is False  # no top-level `modules` name
    assert probe["grammar"] is True
    assert probe["font"] > 100_000
    assert probe["sources"] == sorted(f"plugin '{family}' of visprog" for family in FAMILIES)
    assert probe["version"] == tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]

    imp = subprocess.run(
        [str(python), "-c", "import modules"], cwd=work, env=_env(), capture_output=True, text=True, timeout=60
    )
    assert imp.returncode != 0
    assert "No module named 'modules'" in imp.stderr

    script = bindir / ("visprog.exe" if os.name == "nt" else "visprog")
    assert script.is_file()
    listing = _run([script, "modules"], cwd=work).stdout
    for name in ["Crop", "CropRightOf", "Count", "Eval", "Result", "ColorPop", "BgBlur", "Emoji", "Tag", "FaceDet"]:
        assert f"\n{name}(" in "\n" + listing, name

    program = work / "tag.vp"
    program.write_text(CHECK_PROGRAM, encoding="utf-8")
    checked = _run([script, "check", program], cwd=work).stdout
    assert checked.startswith(f"{program}: ok, 5 steps")

    # Tag draws with the font the wheel ships
    photo = work / "astronaut.png"
    PILImage.fromarray(data.astronaut()).save(photo)
    outdir = work / "out"
    ran = _run([script, "exec", program, "--image", photo, "--backend", "FaceDet=cascade", "-o", outdir], cwd=work)
    assert "FINAL_RESULT: Image 512x512" in ran.stdout
    result = np.asarray(PILImage.open(outdir / "result.png").convert("RGB"))
    assert result.shape == (512, 512, 3)
    assert (result != data.astronaut()).any()
