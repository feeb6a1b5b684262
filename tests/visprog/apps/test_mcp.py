"""The MCP server (``visprog mcp``) as an agent sees it: the MCP SDK's own client talking to ``python -m visprog mcp``
over stdio (and once over streamable HTTP).

Offline: FaceDet with its scikit-image cascade, and a scripted OpenAI-compatible server on 127.0.0.1 for the tools
that plan.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from PIL import Image as PILImage
from skimage import data

from tests.llm_server import ScriptedServer, serve_scripted
from tests.servers import clean_llm_env, closed_port

pytest.importorskip("mcp")

from mcp import ClientSession, StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.types import CallToolResult, ImageContent, TextContent

CASCADE = ["--backend", "FaceDet=cascade"]
FACES = "OBJ0=FaceDet(image=IMAGE)\nANSWER0=Count(box=OBJ0)\nFINAL_RESULT=Result(var=ANSWER0)"
HIDE = (
    "OBJ0=FaceDet(image=IMAGE)\nIMAGE0=Emoji(image=IMAGE, object=OBJ0, emoji='grinning_face')\n"
    "FINAL_RESULT=Result(var=IMAGE0)"
)
SAME = (
    "OBJ0=FaceDet(image=LEFT)\nOBJ1=FaceDet(image=RIGHT)\nANSWER0=Count(box=OBJ0)\nANSWER1=Count(box=OBJ1)\n"
    "ANSWER2=Eval(expr='{ANSWER0} == {ANSWER1}')\nFINAL_RESULT=Result(var=ANSWER2)"
)
TOOLS = {"ask_image", "verify_images", "edit_image", "run_program", "check_program", "list_modules"}


@pytest.fixture(scope="module")
def photo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("photo") / "astronaut.jpg"
    PILImage.fromarray(data.astronaut()).save(path, quality=75)  # the cascade finds exactly one face
    return path


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, str]:
    """The server's environment: no LLM settings from outside, the plan cache in tmp_path."""
    clean_llm_env(monkeypatch, tmp_path / "cache")
    environment = dict(os.environ)
    environment.pop("PYTHONPATH", None)
    return environment


@pytest.fixture
def llm(env: dict[str, str]) -> Iterator[ScriptedServer]:
    with serve_scripted() as scripted:
        yield scripted


@contextlib.asynccontextmanager
async def connect(env: dict[str, str], cwd: Path, *options: str) -> AsyncIterator[ClientSession]:
    """A client session with ``python -m visprog mcp`` on stdio; the server's standard error goes to cwd/stderr.txt."""
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "visprog", "mcp", *CASCADE, *options], env=env, cwd=cwd
    )
    with (cwd / "stderr.txt").open("w") as errlog:
        async with stdio_client(params, errlog=errlog) as (read, write), ClientSession(read, write) as session:
            await session.initialize()
            yield session


def text_of(result: CallToolResult) -> str:
    return "\n".join(block.text for block in result.content if isinstance(block, TextContent))


def image_of(result: CallToolResult) -> PILImage.Image:
    images = [block for block in result.content if isinstance(block, ImageContent)]
    assert len(images) == 1 and images[0].mime_type == "image/png"
    return PILImage.open(io.BytesIO(base64.b64decode(images[0].data)))


def call(session: ClientSession, name: str, arguments: dict[str, Any]) -> Any:
    return session.call_tool(name, arguments, read_timeout_seconds=60)


# --- no LLM: list, check, run ----------------------------------------------------------------------------------


def test_tools_are_described_from_the_registry_and_check_program_gives_line_and_column(
    env: dict[str, str], tmp_path: Path
) -> None:
    async def main() -> None:
        async with connect(env, tmp_path) as session:
            tools = {tool.name: tool for tool in (await session.list_tools()).tools}
            assert set(tools) == TOOLS
            reference = tools["run_program"].description or ""
            # the module reference the planner reads: signatures and argument descriptions
            assert "FaceDet(image: Image) -> Objects" in reference and "Emoji(" in reference
            assert "Question: How many cars are parked to the left of the truck?\nBOX0=Loc(" in reference
            for name in ("ask_image", "edit_image", "check_program", "list_modules"):
                assert all(module in (tools[name].description or "") for module in ("Loc", "FaceDet", "Vqa")), name
            assert tools["ask_image"].input_schema["required"] == ["image", "question"]
            assert tools["run_program"].annotations is not None and tools["run_program"].annotations.read_only_hint

            listed = await call(session, "list_modules", {})
            assert not listed.is_error
            names = [m["name"] for m in listed.structured_content["modules"]]
            assert {"Loc", "FaceDet", "Emoji", "Count", "Result"} <= set(names)
            assert text_of(listed).startswith(names[0] + "(")

            bad = await call(session, "check_program", {"program": "OBJ0=FaceDet(image=IMAGE)\nN=Count(box=OBJ9)"})
            assert not bad.is_error  # the check ran: its finding is the answer
            assert bad.structured_content["ok"] is False
            [diagnostic] = bad.structured_content["diagnostics"]
            assert (diagnostic["line"], diagnostic["column"]) == (2, 13)
            assert "undefined variable 'OBJ9'" in diagnostic["message"]
            assert text_of(bad).startswith("1 check error:\nline 2, col 13: undefined variable 'OBJ9'")

            good = await call(session, "check_program", {"program": FACES})
            assert good.structured_content["ok"] is True
            assert good.structured_content["result"] == {"name": "FINAL_RESULT", "type": "int"}
            assert text_of(good) == "ok: 3 steps, inputs IMAGE, result FINAL_RESULT (int)"

    anyio.run(main)
    assert "visprog MCP server on stdio" in (tmp_path / "stderr.txt").read_text()


def test_run_program_on_a_path_and_on_base64_returns_image_content(
    env: dict[str, str], tmp_path: Path, photo: Path
) -> None:
    png = io.BytesIO()
    PILImage.open(photo).save(png, format="PNG")
    encoded = base64.b64encode(png.getvalue()).decode()

    async def main() -> None:
        async with connect(env, tmp_path) as session:
            counted = await call(session, "run_program", {"program": FACES, "images": {"IMAGE": str(photo)}})
            assert not counted.is_error, text_of(counted)
            assert counted.structured_content["result"] == 1
            assert counted.structured_content["result_type"] == "int"
            modules = [step["module"] for step in counted.structured_content["steps"]]
            assert modules == ["FaceDet", "Count", "Result"]
            assert text_of(counted).startswith("result: 1\n\nprogram:\nOBJ0=FaceDet(image=IMAGE)")
            assert not [b for b in counted.content if isinstance(b, ImageContent)]

            for image in (encoded, f"data:image/png;base64,{encoded}"):
                hidden = await call(session, "run_program", {"program": HIDE, "images": {"IMAGE": image}})
                assert not hidden.is_error, text_of(hidden)
                assert hidden.structured_content["result"] == "Image 512x512"
                edited = image_of(hidden)
                assert edited.size == (512, 512)
                assert edited.convert("RGB").tobytes() != PILImage.open(photo).convert("RGB").tobytes()

            failed = await call(session, "run_program", {"program": "OBJ0=FaceDet(image=IMAGE)\nX=Count(box=1)"})
            assert failed.is_error  # every problem, with its line and column
            diagnostics = failed.structured_content["error"]["diagnostics"]
            assert [(d["line"], d["column"]) for d in diagnostics] == [(1, 20), (2, 13)]
            assert text_of(failed).startswith(
                "2 check errors:\nline 1, col 20: the program reads the input IMAGE, which was not given"
            )

    anyio.run(main)


def test_an_image_that_cannot_be_read_is_a_tool_error_and_the_server_goes_on(
    env: dict[str, str], tmp_path: Path, photo: Path
) -> None:
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)  # opened plainly, it would block the server until a writer came
    (tmp_path / "notes.jpg").write_text("not an image")

    async def main() -> None:
        async with connect(env, tmp_path) as session:
            expected = {
                str(tmp_path / "missing.jpg"): f"{tmp_path / 'missing.jpg'}: no such file",
                str(fifo): f"{fifo}: is a FIFO, not an image file",
                str(tmp_path): f"{tmp_path}: is a directory, not an image file",
                "notes.jpg": "notes.jpg: not an image Pillow can read",  # relative to the server's folder
                "data:image/png;base64,%%%": "IMAGE: not valid base64",
            }
            for image, message in expected.items():
                result = await call(session, "run_program", {"program": FACES, "images": {"IMAGE": image}})
                assert result.is_error, image
                assert text_of(result).startswith(f"error: {message}"), text_of(result)
                assert result.structured_content["error"]["type"] == "ImageError"
            asked = await call(session, "ask_image", {"image": str(tmp_path / "missing.jpg"), "question": "Who?"})
            assert asked.is_error and "no such file" in text_of(asked)
            after = await call(session, "run_program", {"program": FACES, "images": {"IMAGE": str(photo)}})
            assert after.structured_content["result"] == 1  # the server is still there

    anyio.run(main)


# --- the tools that plan --------------------------------------------------------------------------------------


def test_ask_verify_and_edit_plan_with_the_llm_and_run_the_program(
    env: dict[str, str], llm: ScriptedServer, tmp_path: Path, photo: Path
) -> None:
    llm.script([FACES, SAME, HIDE])

    async def main() -> None:
        planner = ["--base-url", llm.url, "--model", "tiny", "--no-cache"]
        async with connect(env, tmp_path, *planner) as session:
            asked = await call(session, "ask_image", {"image": str(photo), "question": "How many faces?"})
            assert not asked.is_error, text_of(asked)
            answer = asked.structured_content
            assert (answer["task"], answer["text"], answer["result"], answer["agreement"]) == (
                "gqa",
                "How many faces?",
                1,
                1.0,
            )
            assert answer["program"] == FACES
            assert "Question: How many faces?" in json.dumps(llm.requests[0].body["messages"])

            verified = await call(
                session, "verify_images", {"left": str(photo), "right": str(photo), "statement": "Same faces."}
            )
            assert not verified.is_error, text_of(verified)
            assert (verified.structured_content["task"], verified.structured_content["result"]) == ("nlvr", True)

            edited = await call(session, "edit_image", {"image": str(photo), "instruction": "Hide the face"})
            assert not edited.is_error, text_of(edited)
            assert edited.structured_content["program"] == HIDE
            assert image_of(edited).size == (512, 512)

            nothing_left = await call(session, "ask_image", {"image": str(photo), "question": "And now?"})
            assert nothing_left.is_error  # the LLM server refuses: its message, not a crash
            assert "no scripted reply left" in text_of(nothing_left)

    anyio.run(main)
    assert llm.pending == 0


def test_stdout_carries_the_protocol_alone(env: dict[str, str], tmp_path: Path, photo: Path) -> None:
    messages = [
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {
                "protocolVersion": "2025-06-18",
                "capabilities": {},
                "clientInfo": {"name": "t", "version": "0"},
            },
        },
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {
            "jsonrpc": "2.0",
            "id": 2,
            "method": "tools/call",
            "params": {"name": "run_program", "arguments": {"program": HIDE, "images": {"IMAGE": str(photo)}}},
        },
    ]
    server = subprocess.Popen(
        [sys.executable, "-m", "visprog", "mcp", *CASCADE],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd=tmp_path,
        text=True,
    )
    assert server.stdin is not None and server.stdout is not None
    for message in messages:
        server.stdin.write(json.dumps(message) + "\n")
    server.stdin.flush()
    replies = [json.loads(server.stdout.readline()) for _ in range(2)]  # one line per message, JSON each
    rest, stderr = server.communicate(timeout=30)  # closes stdin: the client has gone, the server ends
    assert server.returncode == 0, stderr
    assert rest == ""
    assert [r["id"] for r in replies] == [1, 2]
    assert replies[1]["result"]["isError"] is False
    assert [c["type"] for c in replies[1]["result"]["content"]] == ["text", "image"]
    assert "visprog MCP server on stdio" in stderr


# --- streamable HTTP --------------------------------------------------------------------------------------------


def test_streamable_http_answers_list_tools(env: dict[str, str], tmp_path: Path) -> None:
    port = closed_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "visprog", "mcp", "--transport", "http", "--port", str(port), *CASCADE],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd=tmp_path,
        text=True,
    )
    try:
        assert server.stdout is not None
        assert server.stdout.readline() == f"visprog MCP server on http://127.0.0.1:{port}/mcp (Ctrl+C to stop)\n"

        async def main() -> set[str]:
            deadline = time.monotonic() + 30
            while True:  # the line comes just before uvicorn listens
                try:
                    async with (
                        streamable_http_client(f"http://127.0.0.1:{port}/mcp") as (read, write),
                        ClientSession(read, write) as session,
                    ):
                        await session.initialize()
                        return {tool.name for tool in (await session.list_tools()).tools}
                except Exception:
                    if time.monotonic() > deadline:
                        raise
                    await anyio.sleep(0.2)

        assert anyio.run(main) == TOOLS
    finally:
        server.terminate()
        server.communicate(timeout=10)


def test_a_server_that_reads_no_paths_takes_base64_only(photo: Path) -> None:
    from visprog.apps.mcp_content import read_image
    from visprog.errors import ImageError

    with pytest.raises(ImageError, match=r"^IMAGE: this server reads no files .*send the image as base64"):
        read_image(str(photo), "IMAGE", allow_paths=False)
    encoded = base64.b64encode(photo.read_bytes()).decode()
    assert read_image(encoded, "IMAGE", allow_paths=False).size == (512, 512)
    wrapped = "\n".join(encoded[i : i + 76] for i in range(0, len(encoded), 76))  # as base64 tools write it
    assert read_image(wrapped, "IMAGE", allow_paths=False).size == (512, 512)
