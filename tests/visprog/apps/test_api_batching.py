"""Concurrent HTTP requests share batched module calls; each keeps its own trace; a failing one fails alone."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from tests import fakes
from tests.visprog.apps.api_server import png_base64, serve_api
from visprog.apps.api import create_app
from visprog.apps.api_service import ApiSettings

N = 8


def program(k: int) -> str:
    return f"ANSWER0=Vqa(image=IMAGE, question='Question {k}?')\nFINAL_RESULT=Result(var=ANSWER0)"


FAILING = "ANSWER0=Vqa(image=IMAGE, question='How many?')\nX=Eval(expr='{ANSWER0} / 0')\nFINAL_RESULT=Result(var=X)"


@pytest.fixture(autouse=True)
def _reset() -> Iterator[None]:
    fakes.reset()
    yield
    fakes.reset()


def post_together(url: str, bodies: list[dict[str, Any]]) -> list[dict[str, Any]]:
    start = threading.Barrier(len(bodies))

    def post(body: dict[str, Any]) -> dict[str, Any]:
        start.wait()
        r = httpx.post(f"{url}/v1/run", json=body, trust_env=False, timeout=30)
        assert r.status_code == 200, r.text
        return dict(r.json())

    with ThreadPoolExecutor(len(bodies)) as pool:
        return list(pool.map(post, bodies))


def test_concurrent_requests_share_module_calls_and_keep_their_own_traces() -> None:
    for k in range(N):
        fakes.VQA_ANSWERS[f"Question {k}?"] = f"answer {k}"
    app = create_app(ApiSettings(window=0.2), registry=fakes.registry())
    bodies = [
        {"program": program(k), "images": {"IMAGE": png_base64(colour="red" if k % 2 else "blue")}} for k in range(N)
    ]
    bodies.append({"program": FAILING, "images": {"IMAGE": png_base64()}})
    with serve_api(app) as url:
        responses = post_together(url, bodies)
    vqa_calls = [n for name, n in fakes.CALLS if name == "Vqa"]
    assert sum(vqa_calls) == N + 1 and max(vqa_calls) > 1, vqa_calls  # fewer calls than requests
    for k, body in enumerate(responses[:N]):
        assert body["ok"] and body["result"] == f"answer {k}"
        trace = body["trace"]
        assert trace["source"] == program(k) and len(trace["steps"]) == 2
        assert trace["steps"][0]["inputs"]["question"] == f"Question {k}?"
        assert trace["steps"][0]["batch"] in vqa_calls
        assert list(trace["inputs"]) == ["IMAGE"] and len(trace["images"]) == 1  # its own image only
    failed = responses[N]
    assert failed["ok"] is False and failed["error"]["code"] == "step_failed" and failed["error"]["line"] == 2
    assert [s["module"] for s in failed["trace"]["steps"]] == ["Vqa", "Eval"]


def test_window_zero_and_max_batch_one_run_each_request_alone() -> None:
    app = create_app(ApiSettings(window=0, max_batch=1), registry=fakes.registry())
    with serve_api(app) as url:
        responses = post_together(url, [{"program": program(k), "images": {"IMAGE": png_base64()}} for k in range(4)])
    assert all(r["ok"] for r in responses)
    assert [n for name, n in fakes.CALLS if name == "Vqa"] == [1, 1, 1, 1]
