"""The notebooks run top to bottom offline, and are stored executed, with the outputs a fresh run gives.

Each notebook is executed with nbclient in a kernel on this interpreter (a
kernelspec written to a temporary ``JUPYTER_PATH``, so no other Python's
``python3`` kernel is picked up). The notebooks use only offline backends
(FaceDet ``cascade``, modules without a model) and a scripted planner
(:mod:`visprog.planner.scripted`). They import only what is installed, never a
file next to them, so a notebook copied anywhere runs.

When a notebook or what it shows changes, store it executed again with::

    .venv/bin/python tests/test_notebooks.py
"""

from __future__ import annotations

import ast
import importlib.util
import io
import json
import os
import re
import sys
import tempfile
from base64 import b64decode
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
NAMES = ("01_quickstart.ipynb", "02_write_a_module.ipynb", "03_programs_by_hand.ipynb")
CELL_TIMEOUT = 120
REEXECUTE = ".venv/bin/python tests/test_notebooks.py"

# --------------------------------------------------------------------------- reading notebooks


def _code_cells(nb: dict[str, Any]) -> list[dict[str, Any]]:
    return [c for c in nb["cells"] if c["cell_type"] == "code"]


def _source(cell: dict[str, Any]) -> str:
    src = cell["source"]
    return src if isinstance(src, str) else "".join(src)


def _cell(nb: dict[str, Any], snippet: str) -> dict[str, Any]:
    """The one code cell whose source contains ``snippet``."""
    found = [c for c in _code_cells(nb) if snippet in _source(c)]
    assert len(found) == 1, f"expected one code cell containing {snippet!r}, found {len(found)}"
    return found[0]


def _join(value: str | list[str]) -> str:
    return value if isinstance(value, str) else "".join(value)


def _text(cell: dict[str, Any]) -> str:
    """A cell's printed text and text/plain results, in order."""
    parts = []
    for out in cell["outputs"]:
        if out["output_type"] == "stream":
            parts.append(_join(out["text"]))
        elif "text/plain" in out.get("data", {}):
            parts.append(_join(out["data"]["text/plain"]))
    return "".join(parts)


def _plain(cell: dict[str, Any]) -> str:
    """The printed text and plain-text-only results of a cell, with timings and addresses blanked."""
    parts = []
    for out in cell["outputs"]:
        if out["output_type"] == "stream":
            parts.append(_join(out["text"]))
        elif set(out.get("data", {})) == {"text/plain"}:
            parts.append(_join(out["data"]["text/plain"]))
    text = re.sub(r"0x[0-9a-fA-F]+", "0x…", re.sub(r"\d+(\.\d+)? ms\b", "… ms", "".join(parts)))
    return re.sub(r" \(at [^()\n]+:\d+\)", " (at …)", text)  # where a module raised: a path of this checkout


def _mimes(cell: dict[str, Any]) -> list[tuple[str, ...]]:
    """What kind each output of a cell is: ``("stream",)`` or its sorted mime types.

    Consecutive stream outputs count as one: how printed text is split into messages depends on timing.
    """
    kinds: list[tuple[str, ...]] = []
    for out in cell["outputs"]:
        kind = ("stream",) if out["output_type"] == "stream" else tuple(sorted(out.get("data", {})))
        if not (kind == ("stream",) and kinds and kinds[-1] == kind):
            kinds.append(kind)
    return kinds


def _data(cell: dict[str, Any], mime: str) -> str:
    found = [_join(out["data"][mime]) for out in cell["outputs"] if mime in out.get("data", {})]
    assert found, f"no {mime} output in the cell:\n{_source(cell)}"
    return found[0]


def _png(cell: dict[str, Any]) -> Any:
    from PIL import Image

    return Image.open(io.BytesIO(b64decode(_data(cell, "image/png")))).convert("RGB")


# --------------------------------------------------------------------------- what each notebook must show


def _check_quickstart(nb: dict[str, Any]) -> None:
    import numpy as np

    ask = _cell(nb, "visprog.ask(")
    assert "FaceDet(image=IMAGE)" in _text(ask)
    assert _text(ask).rstrip().endswith("'yes'")
    assert "result: FINAL_RESULT (line 4), total " in _text(_cell(nb, "print(solution.trace.to_text())"))

    # the trace renders inline: `import visprog` has IPython show it as its HTML page
    html = _data(_trace_cell(nb), "text/html")
    assert "visprog-trace" in html and re.search(r"data:image/(png|jpeg);base64,", html)

    edit = _cell(nb, "visprog.edit(")
    assert "Emoji(image=IMAGE, object=OBJ0, emoji='smiling_face_with_sunglasses')" in _text(edit)
    # the picture: the photo, then the edited photo, each 256 high, 8 px apart; only the face changed
    sheet = np.asarray(_png(edit), dtype=float)
    assert sheet.shape == (256, 520, 3)
    before, after = sheet[:, :256], sheet[:, 264:]
    change = np.abs(before - after).mean(axis=2)
    face = np.zeros(change.shape, dtype=bool)
    face[69 // 2 : 162 // 2, 181 // 2 : 274 // 2] = True  # the cascade's face box, at half size
    assert change[face].mean() > 40, "the face is not hidden in the edited picture"
    assert change[~face].mean() < 2, "the edit changed more than the face"

    assert "face (181.0, 69.0, 274.0, 162.0)" in _text(_cell(nb, 'step("OBJ0")'))


def _trace_cell(nb: dict[str, Any]) -> dict[str, Any]:
    found = [c for c in _code_cells(nb) if _source(c).strip() == "solution.trace"]
    assert len(found) == 1, "expected one cell that displays solution.trace"
    return found[0]


def _check_write_a_module(nb: dict[str, Any]) -> None:
    signature = "Pixelate(image: Image, object: Objects, size: int = 12) -> Image"
    assert signature in _text(_cell(nb, "describe(Pixelate)"))
    reference = _text(_cell(nb, "module_reference(registry)"))
    assert reference.startswith(signature)
    assert "size: the side of a block, in pixels; larger is coarser." in reference
    assert "in the default registry's reference: False" in reference
    assert "parameter 'tiles' has no type hint" in _text(_cell(nb, "def Mosaic("))
    assert "unknown module 'Pixelate'" in _text(_cell(nb, "visprog.check(program)"))
    assert "argument 'size' of Pixelate expects int, got str 'big'" in _text(_cell(nb, "size='big'"))

    run = _cell(nb, '"Pixelate the face"')
    assert "IMAGE0=Pixelate(image=IMAGE, object=OBJ0)" in _text(run)
    assert _png(run).size == (520, 256)
    sent = _text(_cell(nb, "llm.requests"))
    assert "requests: 2" in sent
    assert "Pixelate in the system prompt: True" in sent
    assert "unknown argument 'objects' for Pixelate (did you mean 'object'?)" in sent
    assert "(aliases: PIXELATE; from plugin 'pixelate')" in _text(_cell(nb, "load_plugins"))
    assert "is already taken by module 'Crop'" in _text(_cell(nb, "def MyCrop("))


def _check_programs_by_hand(nb: dict[str, Any]) -> None:
    steps = _text(_cell(nb, "checked.steps"))
    assert "line 2: OBJ0 is Objects, from FaceDet" in steps
    graph = _text(_cell(nb, "to_mermaid())\n"))
    assert graph.startswith("flowchart TD") and "s0 -->|OBJ0| s1" in graph
    assert "ready together: [[0], [1, 2, 3], [4], [5]]" in graph
    assert "```mermaid" in _data(_cell(nb, "Markdown("), "text/markdown")

    run = _text(_cell(nb, "visprog.run(checked"))
    assert run.startswith("'one face'") and "CropBelow" in run and "ColorPop" in run
    assert _png(_cell(nb, 'values["IMAGE0"]')).height == 256

    broken = _text(_cell(nb, 'print(f"{len(e.diagnostics)} check errors:")'))
    assert broken.startswith("5 check errors:")
    # a diagnostic: the message, the source line, and a caret under the column
    caret = r"line 2, col 35: undefined variable 'OBJ1'.*\n  IMAGE0=CropBelow\(image=IMAGE, box=OBJ1\)\n {36}\^\n"
    assert re.search(caret, broken)
    assert "unknown module 'Cuont' (did you mean 'Count'?)" in broken
    assert "argument 'image' of ColorPop expects Image, got Objects" in broken

    syntax = _text(_cell(nb, "except visprog.ProgramSyntaxError"))
    assert "line 1, col 25: missing ')' at the end of the step" in syntax
    assert re.search(r"\n {2}OBJ0 FaceDet\(image=IMAGE\)\n {7}\^", syntax)

    failed = _text(_cell(nb, "error.partial_results"))
    assert "line 3, Emoji (step IMAGE0) failed" in failed
    assert "computed before it: {'IMAGE': 'Image', 'NAME': 'str', 'OBJ0': 'Objects', 'N': 'int'}" in failed
    assert "run failed at line 3 (Emoji); not run: line 4 (it needs line 3)" in _text(
        _cell(nb, "error.trace.to_text()")
    )

    injection = _text(_cell(nb, "payload ="))
    assert "still the same string: True | compared as a value: False" in injection


CHECKS = {
    "01_quickstart.ipynb": _check_quickstart,
    "02_write_a_module.ipynb": _check_write_a_module,
    "03_programs_by_hand.ipynb": _check_programs_by_hand,
}

# --------------------------------------------------------------------------- running notebooks


def _kernelspec_dir(root: Path) -> Path:
    """A ``JUPYTER_PATH`` whose ``python3`` kernel is this interpreter."""
    spec = root / "kernels" / "python3"
    spec.mkdir(parents=True, exist_ok=True)
    kernel = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (ipykernel)",
        "language": "python",
    }
    (spec / "kernel.json").write_text(json.dumps(kernel), encoding="utf-8")
    return root


def execute(path: Path) -> Any:
    """The notebook at ``path``, executed top to bottom in a fresh kernel (raises on the first failing cell)."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb,
        kernel_name="python3",
        timeout=CELL_TIMEOUT,
        record_timing=False,  # no timestamps in the stored cells' metadata
        resources={"metadata": {"path": str(path.parent)}},
    )
    client.execute()
    return nb


@pytest.fixture(scope="module")
def executed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Every notebook, executed now (as plain JSON-like dicts)."""
    for name in ("nbclient", "nbformat", "ipykernel"):
        pytest.importorskip(name, reason=f"{name} is needed to run the notebooks (the test extra installs it)")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JUPYTER_PATH", str(_kernelspec_dir(tmp_path_factory.mktemp("jupyter"))))
        mp.setenv("PYTHONDONTWRITEBYTECODE", "1")  # no __pycache__ next to the notebooks
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("TRANSFORMERS_OFFLINE", "1")
        yield {name: json.loads(json.dumps(execute(NOTEBOOKS / name))) for name in NAMES}


def _stored(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((NOTEBOOKS / name).read_text(encoding="utf-8"))
    return data


def _errors(nb: dict[str, Any]) -> list[str]:
    return [
        f"{out['ename']}: {out['evalue']}"
        for cell in _code_cells(nb)
        for out in cell["outputs"]
        if out["output_type"] == "error"
    ]


# --------------------------------------------------------------------------- tests


def _imported(source: str) -> list[str]:
    """The top-level modules a code cell imports (IPython's ``%magic`` and ``!shell`` lines left out)."""
    code = "\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in source.splitlines())
    names = []
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Import):
            names += [alias.name.partition(".")[0] for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"a relative import: {ast.unparse(node)}"
            names.append(str(node.module).partition(".")[0])
    return names


def test_notebooks_import_nothing_from_their_folder() -> None:
    """A notebook copied out of the repository runs: every import is an installed module, none a file beside it."""
    assert sorted(p.name for p in NOTEBOOKS.iterdir() if p.suffix == ".py" or p.is_dir()) == []
    for name in NAMES:
        for cell in _code_cells(_stored(name)):
            source = _source(cell)
            assert "sys.path" not in source, f"{name} changes sys.path:\n{source}"
            for module in _imported(source):
                spec = importlib.util.find_spec(module)
                assert spec is not None, f"{name} imports {module}, which is not installed"
                where = Path(spec.origin or next(iter(spec.submodule_search_locations or []), "")).resolve()
                assert NOTEBOOKS not in where.parents, f"{name} imports {module} from {where}"


def test_the_scripted_planner_is_a_real_planner() -> None:
    """What the notebooks plan with: the planner's checking and repair, the replies from a list."""
    from tests import fakes
    from visprog.planner.events import RepairRound
    from visprog.planner.scripted import ScriptedLLM, scripted_planner

    good = "OBJ0=Loc(image=IMAGE, object='dog')\nANSWER0=Count(box=OBJ0)\nFINAL_RESULT=Result(var=ANSWER0)"
    planner = scripted_planner([good.replace("Count(box=", "Count(boxes="), good], registry=fakes.registry())
    events: list[object] = []
    plan = planner.plan("gqa", "How many dogs?", on_event=events.append)
    assert plan.program.strip() == good
    assert [type(e) for e in events].count(RepairRound) == 1
    llm = planner.backend
    assert isinstance(llm, ScriptedLLM) and len(llm.requests) == 2 and llm.replies == []
    assert "boxes" in str(llm.requests[1][-1]["content"])  # the checker's diagnostics went back to the model
    with pytest.raises(RuntimeError, match="no scripted reply left"):
        planner.plan("gqa", "How many cats?")


def test_show_puts_images_side_by_side() -> None:
    import numpy as np

    from visprog.presentation.notebook import contact_sheet

    photo = np.zeros((100, 200, 3), dtype=np.uint8)
    mask = np.ones((50, 50), dtype=bool)
    sheet = np.asarray(contact_sheet(photo, mask, height=40, gap=4))
    assert sheet.shape == (40, 80 + 4 + 40, 3)
    assert (sheet[:, :80] == 0).all() and (sheet[:, 80:84] == 255).all() and (sheet[:, 84:] == 255).all()
    with pytest.raises(ValueError, match="at least one image"):
        contact_sheet()


@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs_offline_and_shows_what_it_says(executed: dict[str, Any], name: str) -> None:
    nb = executed[name]
    assert _errors(nb) == []
    CHECKS[name](nb)


@pytest.mark.parametrize("name", NAMES)
def test_stored_notebook_is_executed_top_to_bottom(name: str) -> None:
    nb = _stored(name)
    cells = _code_cells(nb)
    counts = [c["execution_count"] for c in cells]
    assert counts == list(range(1, len(cells) + 1)), (
        f"{name} is not stored executed top to bottom; store it: {REEXECUTE}"
    )
    assert _errors(nb) == []
    assert nb["metadata"]["kernelspec"]["name"] == "python3"
    CHECKS[name](nb)


@pytest.mark.parametrize("name", NAMES)
def test_stored_outputs_are_those_of_a_fresh_run(executed: dict[str, Any], name: str) -> None:
    """Same cells, same kinds of output: a stored notebook is not stale (timings may differ, nothing else)."""
    stored, fresh = _stored(name), executed[name]
    assert [_source(c) for c in _code_cells(stored)] == [_source(c) for c in _code_cells(fresh)]
    for old, new in zip(_code_cells(stored), _code_cells(fresh), strict=True):
        stale = f"{name}: stale outputs in\n{_source(old)}\nstore the notebooks again: {REEXECUTE}"
        assert _mimes(old) == _mimes(new), stale
        assert _plain(old) == _plain(new), stale


def _store_all() -> None:
    """Execute every notebook and store it with its outputs: run this file as a script after a change."""
    import nbformat

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["JUPYTER_PATH"] = str(_kernelspec_dir(Path(tmp)))
        os.environ["PYTHONDONTWRITEBYTECODE"] = "1"
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        for name in NAMES:
            path = NOTEBOOKS / name
            nb = execute(path)
            for cell in nb.cells:
                cell.metadata.pop("execution", None)  # timestamps of an earlier run
            nb.metadata["kernelspec"] = {
                "display_name": "Python 3 (ipykernel)",
                "language": "python",
                "name": "python3",
            }
            nb.metadata["language_info"] = {"name": "python"}
            nbformat.write(nb, path)
            CHECKS[name](json.loads(path.read_text(encoding="utf-8")))
            print(f"stored {path.relative_to(ROOT)} ({path.stat().st_size // 1024} KiB)")


if __name__ == "__main__":
    _store_all()
