"""The HTTP API over real HTTP on 127.0.0.1: every endpoint, JSON and multipart, events, limits, token, errors."""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import httpx
import pytest
from PIL import Image as PILImage

from tests import fakes
from tests.llm_server import ScriptedServer, serve_scripted
from tests.servers import closed_port
from tests.visprog.apps.api_server import png_base64, png_bytes, serve_api, sse_events
from visprog.apps.api import create_app
from visprog.apps.api_service import ApiSettings
from visprog.apps.cli import main
from visprog.language.signatures import Registry, module
from visprog.llm import client_from_options
from visprog.planner.core import Planner
from visprog.running.runtime import Context

GQA = "ANSWER0=Vqa(image=IMAGE, question='What is it?')\nFINAL_RESULT=Result(var=ANSWER0)"
CROP = "BOX0=Loc(image=IMAGE, object='TOP')\nIMAGE0=Crop(image=IMAGE, box=BOX0)\nFINAL_RESULT=Result(var=IMAGE0)"
NLVR = (
    "ANSWER0=Vqa(image=LEFT, question='How many dogs?')\nANSWER1=Vqa(image=RIGHT, question='How many dogs?')\n"
    "ANSWER2=Eval(expr='{ANSWER0} + {ANSWER1} == 4')\nFINAL_ANSWER=Result(var=ANSWER2)"
)
SLOW = "W=Wait(seconds=0.4)\nFINAL_RESULT=Result(var=W)"


def _wait_batch(calls: Sequence[dict[str, Any]], ctx: Context) -> list[str]:
    time.sleep(max(c["seconds"] for c in calls))
    return ["waited"] * len(calls)


@module(batch=_wait_batch)
def Wait(seconds: float) -> str:
    """Sleep a while (a slow model call).

    Args:
        seconds: how long.
    """
    time.sleep(seconds)
    return "waited"


def registry() -> Registry:
    reg = fakes.registry()
    reg.register(Wait, source="tests")
    return reg


@pytest.fixture(scope="module")
def llm() -> Iterator[ScriptedServer]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NO_PROXY", "127.0.0.1,localhost")
        mp.setenv("no_proxy", "127.0.0.1,localhost")
        with serve_scripted() as scripted:
            yield scripted


def make_app(llm_url: str, **settings: Any) -> Any:
    reg = registry()

    def planner() -> Planner:
        return Planner(
            client_from_options(base_url=llm_url, model="tiny", max_retries=0, timeout=5), registry=reg, cache=False
        )

    defaults = {"window": 0.005, "timeout": 20.0, "max_upload_bytes": 200_000, "max_pixels": 1_000_000}
    return create_app(ApiSettings(**{**defaults, **settings}), registry=reg, planner_factory=planner)


@pytest.fixture(scope="module")
def api(llm: ScriptedServer) -> Iterator[httpx.Client]:
    with serve_api(make_app(llm.url)) as url, httpx.Client(base_url=url, trust_env=False, timeout=30) as client:
        yield client


@pytest.fixture(autouse=True)
def _reset(llm: ScriptedServer) -> Iterator[None]:
    fakes.reset()
    llm.script([])
    yield
    fakes.reset()


def run_json(program: str, **images: str) -> dict[str, Any]:
    return {"program": program, "images": images}


# --- programs ---------------------------------------------------------------------------------


def test_run_takes_json_and_multipart_alike(api: httpx.Client) -> None:
    fakes.VQA_ANSWERS["What is it?"] = "a red square"
    by_json = api.post("/v1/run", json=run_json(GQA, IMAGE=png_base64()))
    by_form = api.post("/v1/run", data={"program": GQA}, files={"image": ("x.png", png_bytes(), "image/png")})
    for r in (by_json, by_form):
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["ok"] and body["result"] == "a red square" and body["result_type"] == "str"
        assert body["command"] == "run" and body["program"] == GQA and body["result_var"] == "FINAL_RESULT"
        assert [s["module"] for s in body["trace"]["steps"]] == ["Vqa", "Result"]
        assert set(body["timings"]) == {"plan", "queue", "run", "total"} and body["timings"]["plan"] is None
    without = api.post("/v1/run", json={**run_json(GQA, IMAGE=png_base64()), "trace": False}).json()
    assert without["trace"] is None and without["result"] == "a red square"


def test_an_image_result_comes_as_base64_png(api: httpx.Client) -> None:
    body = api.post("/v1/run", json=run_json(CROP, IMAGE=png_base64((64, 48)))).json()
    assert body["ok"] and body["result_type"] == "Image"
    image = PILImage.open(io.BytesIO(base64.b64decode(body["result_image"])))
    assert image.format == "PNG" and image.width == 64 and image.height < 48  # the top half, with Crop's margin
    assert body["result"] == f"Image {image.width}x{image.height}"


def test_a_failing_step_is_a_result_with_its_error_and_trace(api: httpx.Client) -> None:
    program = "ANSWER0=Vqa(image=IMAGE, question='How many?')\nX=Eval(expr='{ANSWER0} / 0')\nFINAL_RESULT=Result(var=X)"
    r = api.post("/v1/run", json=run_json(program, IMAGE=png_base64()))
    body = r.json()
    assert r.status_code == 200 and body["ok"] is False and body["result"] is None
    assert body["error"]["code"] == "step_failed" and body["error"]["line"] == 2 and body["error"]["module"] == "Eval"
    assert [s["module"] for s in body["trace"]["steps"]] == ["Vqa", "Eval"]


def test_check_gives_diagnostics_with_line_and_column(api: httpx.Client) -> None:
    good = api.post("/v1/check", json={"program": GQA}).json()
    assert good == {
        "ok": True,
        "diagnostics": [],
        "steps": 2,
        "inputs": ["IMAGE"],
        "result": {"name": "FINAL_RESULT", "type": good["result"]["type"]},
    }
    bad = api.post("/v1/check", json={"program": "A=Vqa(image=IMAGE, question='q')\nB=Nope(image=A)"})
    assert bad.status_code == 200
    body = bad.json()
    assert body["ok"] is False and body["kind"] == "check error"
    assert (body["diagnostics"][0]["line"], body["diagnostics"][0]["column"]) == (2, 3)
    assert "Nope" in body["diagnostics"][0]["message"]


def test_modules_health_and_readiness(api: httpx.Client) -> None:
    modules = {m["name"]: m for m in api.get("/v1/modules").json()}
    assert {"Vqa", "Loc", "Crop", "Eval", "Wait"} <= set(modules)
    assert modules["Vqa"]["batch"] is True and [p["name"] for p in modules["Vqa"]["params"]] == ["image", "question"]
    assert api.get("/healthz").json() == {"status": "ok"}
    ready = api.get("/readyz")
    assert ready.status_code == 200 and ready.json()["ready"] is True and ready.json()["max_concurrent"] == 16


# --- tasks: natural language in ---------------------------------------------------------------


def test_ask_plans_with_the_llm_and_runs(api: httpx.Client, llm: ScriptedServer) -> None:
    llm.script([GQA])
    fakes.VQA_ANSWERS["What is it?"] = "a square"
    r = api.post("/v1/ask", json={"text": "What is it?", "images": {"IMAGE": png_base64()}})
    body = r.json()
    assert r.status_code == 200 and body["ok"], body
    assert body["command"] == "ask" and body["task"] == "gqa" and body["text"] == "What is it?"
    assert body["result"] == "a square" and body["agreement"] == 1.0 and body["samples"] == {"drawn": 1, "valid": 1}
    assert body["program"].strip() == GQA and body["timings"]["plan"] > 0
    assert "What is it?" in llm.requests[-1].body["messages"][-1]["content"]


def test_verify_takes_two_uploads_and_samples_vote(api: httpx.Client, llm: ScriptedServer) -> None:
    llm.script([NLVR, NLVR.replace("== 4", "== 5")])
    files = {"LEFT": ("l.png", png_bytes(), "image/png"), "right": ("r.png", png_bytes(), "image/png")}
    r = api.post("/v1/verify", data={"text": "There are four dogs.", "samples": "2"}, files=files)
    body = r.json()
    assert r.status_code == 200 and body["ok"], body
    assert body["result"] is True and body["agreement"] == 0.5 and body["samples"] == {"drawn": 2, "valid": 2}


def test_ask_streams_planner_and_run_events_then_the_result(api: httpx.Client, llm: ScriptedServer) -> None:
    llm.script([GQA])
    body = {"text": "What is it?", "images": {"IMAGE": png_base64()}, "trace": False}
    r = api.post("/v1/ask", json=body, headers={"Accept": "text/event-stream"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r.text)
    names = [name for name, _ in events]
    assert names[0] == "request_sent" and names[-1] == "result"
    assert names.index("planned") < names.index("run_started") < names.index("step_finished")
    assert names.index("run_finished") < names.index("voted") < names.index("result")
    assert names.count("step_finished") == 2
    step = json.loads(events[names.index("step_finished")][1])
    assert step["module"] == "Vqa" and step["value"] == "yes"
    result = json.loads(events[-1][1])
    assert result["ok"] and result["result"] == "yes" and result["trace"] is None


def test_a_planning_failure_is_a_result_and_an_unreachable_llm_a_502() -> None:
    with serve_scripted() as scripted:
        scripted.script(["not a program"] * 3)
        with serve_api(make_app(scripted.url)) as url, httpx.Client(base_url=url, trust_env=False) as client:
            r = client.post("/v1/ask", json={"text": "What?", "images": {"IMAGE": png_base64()}})
            assert r.status_code == 200 and r.json()["error"]["code"] == "planning_failed"
    with serve_api(make_app(f"http://127.0.0.1:{closed_port()}/v1")) as url:
        r = httpx.post(f"{url}/v1/ask", json={"text": "What?", "images": {"IMAGE": png_base64()}}, trust_env=False)
        assert r.status_code == 502 and r.json()["error"]["code"] == "llm_unavailable"


# --- client errors: JSON with a code, never a 500 ---------------------------------------------


def _big_png() -> str:
    return png_base64((1200, 1000))  # 1.2 Mpx, over the 1 Mpx limit; compresses to a few kB


CLIENT_ERRORS: list[tuple[str, dict[str, Any], int, str]] = [
    ("bad JSON", {"content": b'{"program": ', "headers": {"content-type": "application/json"}}, 400, "bad_json"),
    (
        "wrong content type",
        {"content": b"program", "headers": {"content-type": "text/plain"}},
        415,
        "unsupported_media_type",
    ),
    ("no content type", {"content": b"{}"}, 415, "unsupported_media_type"),
    ("bad base64", {"json": run_json(GQA, IMAGE="not base64!")}, 422, "bad_base64"),
    ("not an image", {"json": run_json(GQA, IMAGE=base64.b64encode(b"hello").decode())}, 422, "not_an_image"),
    ("too many pixels", {"json": run_json(GQA, IMAGE=_big_png())}, 422, "too_many_pixels"),
    (
        "over the upload limit",
        {"json": run_json(GQA, IMAGE=base64.b64encode(b"x" * 300_000).decode())},
        413,
        "upload_too_large",
    ),
    ("a URL", {"json": run_json(GQA, IMAGE="https://example.com/cat.jpg")}, 422, "url_not_allowed"),
    (
        "unknown module",
        {"json": run_json("X=Nope(image=IMAGE)\nR=Result(var=X)", IMAGE=png_base64())},
        422,
        "invalid_program",
    ),
    ("bad program", {"json": run_json("X=Vqa(image=IMAGE,", IMAGE=png_base64())}, 422, "invalid_program"),
    ("missing image", {"json": run_json(GQA)}, 422, "invalid_program"),
    ("unknown input", {"json": run_json(GQA, IMAGE=png_base64(), EXTRA=png_base64())}, 422, "unknown_input"),
    ("missing field", {"json": {"images": {}}}, 422, "invalid_request"),
    ("unknown field", {"json": {"program": GQA, "colour": "red"}}, 422, "invalid_request"),
    (
        "a file for a field",
        {"data": {"program": GQA}, "files": {"notes": ("n.txt", b"hi", "text/plain")}},
        422,
        "unknown_input",
    ),
]


@pytest.mark.parametrize(("what", "request_args", "status", "code"), CLIENT_ERRORS, ids=[c[0] for c in CLIENT_ERRORS])
def test_client_errors_are_json_with_a_code(
    api: httpx.Client, what: str, request_args: dict[str, Any], status: int, code: str
) -> None:
    r = api.post("/v1/run", **request_args)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["code"] == code and error["message"] and error["status"] == status


def test_errors_of_a_program_carry_line_and_column(api: httpx.Client) -> None:
    error = api.post("/v1/run", json=run_json("A=Vqa(image=IMAGE, question='q')\nB=Nope(image=A)", IMAGE=png_base64()))
    diagnostics = error.json()["error"]["diagnostics"]
    assert (diagnostics[0]["line"], diagnostics[0]["column"]) == (2, 3) and diagnostics[0][
        "source"
    ] == "B=Nope(image=A)"


def test_task_errors_name_the_missing_image_and_bad_fields(api: httpx.Client) -> None:
    r = api.post("/v1/verify", json={"text": "Two dogs.", "images": {"LEFT": png_base64()}})
    assert r.status_code == 422 and r.json()["error"]["code"] == "missing_image" and "RIGHT" in r.text
    r = api.post("/v1/ask", json={"text": "", "images": {"IMAGE": png_base64()}, "samples": 0})
    assert r.status_code == 422 and r.json()["error"]["fields"] == ["text", "samples"]
    r = api.post(
        "/v1/ask", data={"text": "Hi", "samples": "many"}, files={"IMAGE": ("i.png", png_bytes(), "image/png")}
    )
    assert r.status_code == 422 and r.json()["error"]["fields"] == ["samples"]
    assert api.get("/v1/nothing").json()["error"]["code"] == "not_found"
    assert api.get("/v1/run").status_code == 405 and api.get("/v1/run").json()["error"]["code"] == "method_not_allowed"


# --- limits and the token ---------------------------------------------------------------------


def test_beyond_the_concurrent_bound_and_queue_a_429_with_retry_after(llm: ScriptedServer) -> None:
    app = make_app(llm.url, max_concurrent=1, max_queue=1)
    with serve_api(app) as url:
        statuses: list[httpx.Response] = []

        def post() -> None:
            statuses.append(httpx.post(f"{url}/v1/run", json=run_json(SLOW), trust_env=False, timeout=10))

        threads = [threading.Thread(target=post) for _ in range(2)]
        for t in threads:
            t.start()
            time.sleep(0.1)  # the first runs, the second waits in the queue
        busy = httpx.post(f"{url}/v1/run", json=run_json(SLOW), trust_env=False)
        ready = httpx.get(f"{url}/readyz", trust_env=False)
        for t in threads:
            t.join()
    assert busy.status_code == 429 and busy.json()["error"]["code"] == "busy"
    assert int(busy.headers["Retry-After"]) >= 1
    assert ready.status_code == 503 and ready.json()["running"] == 1 and ready.json()["queued"] == 1
    assert sorted(r.status_code for r in statuses) == [200, 200]
    assert max(r.json()["timings"]["queue"] for r in statuses) > 0.2  # the second waited for the first


def test_a_request_over_the_timeout_is_a_504(llm: ScriptedServer) -> None:
    with serve_api(make_app(llm.url, timeout=0.1)) as url:
        r = httpx.post(f"{url}/v1/run", json=run_json(SLOW), trust_env=False)
        assert r.status_code == 504 and r.json()["error"]["code"] == "timeout"
        stream = httpx.post(
            f"{url}/v1/run", json=run_json(SLOW), headers={"Accept": "text/event-stream"}, trust_env=False
        )
        name, data = sse_events(stream.text)[-1]
        assert name == "error" and json.loads(data)["error"]["code"] == "timeout"


def test_a_token_guards_v1_but_not_the_probes(llm: ScriptedServer) -> None:
    with serve_api(make_app(llm.url, token="s3cret")) as url, httpx.Client(base_url=url, trust_env=False) as c:
        missing = c.get("/v1/modules")
        assert missing.status_code == 401 and missing.json()["error"]["code"] == "unauthorized"
        assert missing.headers["WWW-Authenticate"] == "Bearer"
        assert c.get("/v1/modules", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert c.get("/v1/modules", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        good = c.post("/v1/check", json={"program": GQA}, headers={"Authorization": "Bearer s3cret"})
        assert good.status_code == 200 and good.json()["ok"]
        assert c.get("/healthz").status_code == 200 and c.get("/readyz").status_code == 200


def test_openapi_names_the_request_and_response_models(api: httpx.Client) -> None:
    schema = api.get("/openapi.json").json()
    components = schema["components"]["schemas"]
    for name in ("TaskRequest", "RunRequest", "CheckRequest", "RunResponse", "CheckResponse", "ErrorResponse"):
        assert name in components, name
    ask = schema["paths"]["/v1/ask"]["post"]
    content = ask["requestBody"]["content"]
    assert content["application/json"]["schema"] == {"$ref": "#/components/schemas/TaskRequest"}
    assert content["multipart/form-data"]["schema"]["properties"]["IMAGE"]["format"] == "binary"
    assert ask["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/RunResponse")
    assert ask["responses"]["429"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorResponse")
    verify = schema["paths"]["/v1/verify"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert {"LEFT", "RIGHT", "text"} <= set(verify["properties"])
    assert {"/v1/run", "/v1/check", "/v1/modules", "/v1/edit", "/v1/tag", "/healthz", "/readyz"} <= set(schema["paths"])
    assert "HTTPBearer" in schema["components"]["securitySchemes"]


# --- the command ------------------------------------------------------------------------------


def test_the_command_refuses_a_public_host_without_a_token(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["api", "--host", "0.0.0.0", "--port", str(closed_port())]) == 2
    err = capsys.readouterr().err
    assert "without a token the API listens on loopback only" in err and "--token" in err


def test_the_command_says_a_busy_port_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        assert main(["api", "--port", str(busy.getsockname()[1])]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is in use; pick another with --port" in err
