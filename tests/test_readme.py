"""The README's Python examples run as written.

Every ```python block of README.md's "Python" section is executed in order, in one namespace, in a
folder holding photo.jpg (the astronaut), left.jpg and right.jpg; the planner's
LLM is a scripted OpenAI-compatible server on 127.0.0.1 named by
OPENAI_BASE_URL, exactly as a reader's would be.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from skimage import data

from tests.llm_server import ScriptedServer, serve_scripted

README = Path(__file__).resolve().parent.parent / "README.md"

ASK = "OBJ0=FaceDet(image=IMAGE)\nANSWER0=Count(box=OBJ0)\nFINAL_RESULT=Result(var=ANSWER0)"
VERIFY = (
    "OBJ0=FaceDet(image=LEFT)\nOBJ1=FaceDet(image=RIGHT)\nANSWER0=Count(box=OBJ0)\nANSWER1=Count(box=OBJ1)\n"
    "ANSWER2=Eval(expr='({ANSWER0} > 0) xor ({ANSWER1} > 0)')\nFINAL_ANSWER=Result(var=ANSWER2)"
)
EDIT = (
    "OBJ0=FaceDet(image=IMAGE)\nIMAGE0=Emoji(image=IMAGE, object=OBJ0, emoji='grinning_face')\n"
    "FINAL_RESULT=Result(var=IMAGE0)"
)


def python_blocks(text: str) -> list[str]:
    """The ```python blocks of the README's "## Python" section."""
    section = text.split("\n## Python\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


@pytest.fixture
def reader(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ScriptedServer]:
    Image.fromarray(data.astronaut()).save(tmp_path / "photo.jpg")
    Image.fromarray(data.astronaut()).save(tmp_path / "left.jpg")
    Image.fromarray(data.coffee()).save(tmp_path / "right.jpg")
    monkeypatch.chdir(tmp_path)
    for name in ("OPENAI_API_KEY", "http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("VISPROG_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("VISPROG_LLM_MODEL", "scripted")
    with serve_scripted() as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.url)
        yield server


def test_readme_python_examples_run(reader: ScriptedServer, capsys: pytest.CaptureFixture[str]) -> None:
    blocks = python_blocks(README.read_text(encoding="utf-8"))
    assert len(blocks) >= 3
    reader.script([ASK, VERIFY, EDIT])
    namespace: dict[str, Any] = {"__name__": "readme"}
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)  # the README's own code, not model output
    out = capsys.readouterr().out
    assert "flowchart TD" in out
    assert namespace["trace"].result.size == (512, 512)  # the inverted photo
    assert namespace["answer"].result == 1 and namespace["answer"].program == ASK
    assert namespace["same"].result is True  # a face on the left, none in the coffee cup
    assert Path("edited.png").is_file() and Path("inverted.png").is_file()
    assert len(reader.requests) == 3
