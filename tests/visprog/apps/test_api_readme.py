"""The README's "HTTP API" curl examples run as written, against a live server on 127.0.0.1.

Every ```sh block of the section runs in bash (``-e -o pipefail``) in a folder holding photo.jpg (the
astronaut), with ``http://localhost:8000`` pointing at the test's server; the blocks that install the package
or start the server (``pip install``, ``visprog api``) are the reader's setup and are not run (the test starts
the server itself). The planner's LLM is an OpenAI-compatible server on 127.0.0.1 named by OPENAI_BASE_URL,
exactly as a reader's would be.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from skimage import data

from tests.servers import serve_keyed
from tests.visprog.apps.api_server import serve_api
from visprog.apps.api import create_app
from visprog.apps.api_service import ApiSettings

README = Path(__file__).resolve().parents[3] / "README.md"

ASK = "OBJ0=FaceDet(image=IMAGE)\nANSWER0=Count(box=OBJ0)\nFINAL_RESULT=Result(var=ANSWER0)"
EDIT = (
    "OBJ0=FaceDet(image=IMAGE)\nIMAGE0=Emoji(image=IMAGE, object=OBJ0, emoji='grinning_face')\n"
    "FINAL_RESULT=Result(var=IMAGE0)"
)
REPLIES = {"How many people are in the photo?": ASK, "Hide the face with a grinning face emoji": EDIT}


def sh_blocks(text: str) -> list[str]:
    """The ```sh blocks of the README's "## HTTP API" section (empty when it has none)."""
    if "\n## HTTP API\n" not in text:
        return []
    section = text.split("\n## HTTP API\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sh\n(.*?)```", section, flags=re.S)


def json_objects(text: str) -> list[dict[str, Any]]:
    """The JSON objects printed one after another (curl adds no newline between two responses)."""
    decoder, out, at = json.JSONDecoder(), [], 0
    while at < len(text.rstrip()):
        value, at = decoder.raw_decode(text, at)
        out.append(value)
        while at < len(text) and text[at].isspace():
            at += 1
    return out


def runnable(block: str) -> bool:
    return not re.search(r"^\s*(pip install|\S*visprog api\b)|\s(visprog api)\b", block, flags=re.M)


@pytest.fixture
def reader(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The reader's folder and environment, an LLM on 127.0.0.1 and the API server; yields the API's URL."""
    Image.fromarray(data.astronaut()).save(tmp_path / "photo.jpg")
    monkeypatch.chdir(tmp_path)
    for name in ("OPENAI_API_KEY", "http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("VISPROG_API_TOKEN", raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("VISPROG_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("VISPROG_LLM_MODEL", "scripted")
    with serve_keyed(REPLIES) as (llm_url, _):
        monkeypatch.setenv("OPENAI_BASE_URL", llm_url)
        with serve_api(create_app(ApiSettings())) as url:
            yield url


def test_readme_http_api_examples_run(reader: str, tmp_path: Path) -> None:
    blocks = sh_blocks(README.read_text(encoding="utf-8"))
    if not blocks:
        pytest.skip('README.md has no "## HTTP API" section with ```sh blocks yet')
    for tool in ("curl", "jq", "base64"):
        if shutil.which(tool) is None:
            pytest.skip(f"the README's examples need {tool}")
    outputs = []
    for block in filter(runnable, blocks):
        script = block.replace("http://localhost:8000", reader)
        done = subprocess.run(
            ["bash", "-e", "-o", "pipefail", "-c", script], capture_output=True, text=True, timeout=60, env=os.environ
        )
        assert done.returncode == 0, f"{block}\nstdout: {done.stdout}\nstderr: {done.stderr}"
        outputs.append(done.stdout)
    assert len(outputs) >= 5
    objects = [o for out in outputs if out.startswith("{") for o in json_objects(out)]
    answers = [o for o in objects if "command" in o]
    assert len(answers) == 3 and all(a["ok"] and a["result"] == 1 for a in answers)  # one face: the astronaut's
    checked = next(o for o in objects if "diagnostics" in o)
    assert not checked["ok"] and (checked["diagnostics"][0]["line"], checked["diagnostics"][0]["column"]) == (2, 9)
    streamed = next(out for out in outputs if out.startswith("event: "))
    assert streamed.rstrip().splitlines()[-2] == "event: result"
    edited = Image.open(io.BytesIO((tmp_path / "edited.png").read_bytes()))
    assert edited.format == "PNG" and edited.size == (512, 512)
