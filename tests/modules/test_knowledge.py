"""Tests for List: a real ``openai`` client against a small OpenAI-compatible server on 127.0.0.1."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest
from visprog.modules.knowledge import SYSTEM_PROMPT, List_, parse_items
from visprog.modules.logic import Result

import visprog
from tests.llm_server import Reply as Scripted
from tests.llm_server import serve_scripted
from tests.servers import clean_llm_env, closed_port, serve
from visprog.errors import ConfigError, ServiceError, StepError
from visprog.language.signatures import Registry
from visprog.llm import OpenAIClient
from visprog.running.interpreter import Interpreter
from visprog.running.runtime import Context, RunCache, Runtime

KEY = "sk-test-secret-0123456789"
QUERY = "main characters of the TV show Big Bang Theory"


@dataclass
class Reply:
    content: str = ""
    status: int = 200
    delay: float = 0.0
    error: dict[str, Any] | None = None


@dataclass
class FakeServer:
    """An OpenAI-compatible /v1/chat/completions endpoint answering scripted replies."""

    url: str
    replies: list[Reply] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)


def _handler(server: FakeServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # keep pytest output clean
            pass

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
            server.requests.append(
                {"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()}, "body": body}
            )
            reply = server.replies.pop(0) if server.replies else Reply("")
            if reply.delay:
                time.sleep(reply.delay)
            if reply.status == 200:
                payload: dict[str, Any] = {
                    "id": f"chatcmpl-{len(server.requests)}",
                    "object": "chat.completion",
                    "created": 0,
                    "model": body.get("model", ""),
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": reply.content},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                }
            else:
                payload = {"error": reply.error or {"message": "error", "type": "error", "code": None}}
            data = json.dumps(payload).encode()
            try:
                self.send_response(reply.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout test)
                pass

    return Handler


@pytest.fixture
def server() -> Iterator[FakeServer]:
    fake = FakeServer(url="")
    with serve(_handler(fake)) as url:
        fake.url = f"{url}/v1"
        yield fake


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> None:
    if request.node.get_closest_marker("slow"):
        return  # the real-LLM test uses the real environment
    clean_llm_env(monkeypatch)


def make_ctx(**options: Any) -> Context:
    runtime = Runtime(device_request="cpu", modules={"List": options})
    return Context(runtime, RunCache()).for_module("List", List_.backends, List_.default_backend)


def test_items_from_a_bulleted_reply(server: FakeServer) -> None:
    server.replies.append(
        Reply("- Sheldon Cooper\n- Leonard Hofstadter\n* Penny\n\n• Howard Wolowitz\n- Raj Koothrappali\n")
    )
    items = List_(query=QUERY, max=7, ctx=make_ctx(base_url=server.url, api_key=KEY, model="tiny-llm"))
    assert items == ["Sheldon Cooper", "Leonard Hofstadter", "Penny", "Howard Wolowitz", "Raj Koothrappali"]


def test_numbered_reply_with_preamble_quotes_and_repeats_honours_max(server: FakeServer) -> None:
    server.replies.append(
        Reply(
            'Here are the main characters:\n1. "Sheldon Cooper"\n2) Leonard Hofstadter\n3. **Penny**\n'
            "4. penny.\n5. Howard Wolowitz\n6. Raj Koothrappali"
        )
    )
    items = List_(query=QUERY, max=4, ctx=make_ctx(base_url=server.url, api_key=KEY))
    assert items == ["Sheldon Cooper", "Leonard Hofstadter", "Penny", "Howard Wolowitz"]


def test_request_carries_model_query_key_and_prompt(server: FakeServer) -> None:
    server.replies.append(Reply("red\ngreen\nblue"))
    List_(query="primary colors", max=3, ctx=make_ctx(base_url=server.url, api_key=KEY, model="tiny-llm"))
    (request,) = server.requests
    assert request["path"] == "/v1/chat/completions"
    assert request["headers"]["authorization"] == f"Bearer {KEY}"
    body = request["body"]
    assert body["model"] == "tiny-llm"
    assert body["temperature"] == 0
    system, user = body["messages"]
    assert system == {"role": "system", "content": SYSTEM_PROMPT}
    assert user["role"] == "user"
    assert "primary colors" in user["content"]
    assert "3" in user["content"]


def test_environment_names_model_server_and_key(server: FakeServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", server.url)
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("VISPROG_LLM_MODEL", "env-llm")
    server.replies.append(Reply("a, b, c"))
    assert List_(query="letters", max=5, ctx=make_ctx()) == ["a", "b", "c"]
    assert server.requests[0]["body"]["model"] == "env-llm"
    assert server.requests[0]["headers"]["authorization"] == f"Bearer {KEY}"


def test_default_model_and_keyless_local_server(server: FakeServer) -> None:
    server.replies.append(Reply("x"))
    assert List_(query="letters", max=1, ctx=make_ctx(base_url=server.url)) == ["x"]
    assert server.requests[0]["body"]["model"] == "gpt-4o-mini"


def test_client_is_cached_in_the_pool(server: FakeServer) -> None:
    server.replies.extend([Reply("a"), Reply("b")])
    ctx = make_ctx(base_url=server.url, api_key=KEY)
    assert List_(query="one", max=1, ctx=ctx) == ["a"]
    assert List_(query="two", max=1, ctx=ctx) == ["b"]
    clients = [k for k in ctx.pool.loads if k[0] == "openai-client"]
    assert len(clients) == 1 and ctx.pool.loads[clients[0]] == 1
    assert KEY not in repr(clients)
    client = ctx.pool.get(clients[0], lambda: None)
    assert isinstance(client, OpenAIClient) and client.who == "List"


def test_unreachable_server_fails_fast_and_clearly() -> None:
    url = f"http://127.0.0.1:{closed_port()}/v1"
    ctx = make_ctx(base_url=url, api_key=KEY, model="tiny-llm", timeout=2, max_retries=0)
    start = time.perf_counter()
    with pytest.raises(ServiceError) as err:
        List_(query=QUERY, max=3, ctx=ctx)
    assert time.perf_counter() - start < 5
    message = str(err.value)
    assert message.startswith("List: ")
    assert url in message and "tiny-llm" in message and "could not be reached" in message
    assert KEY not in message


def test_timeout_is_reported(server: FakeServer) -> None:
    server.replies.append(Reply("late", delay=1.5))
    ctx = make_ctx(base_url=server.url, api_key=KEY, timeout=0.3, max_retries=0)
    start = time.perf_counter()
    with pytest.raises(ServiceError, match=r"did not answer within 0\.3 s") as err:
        List_(query=QUERY, max=3, ctx=ctx)
    assert time.perf_counter() - start < 1.4
    assert server.url in str(err.value)


def test_rejected_key_is_never_echoed(server: FakeServer) -> None:
    error = {
        "message": f"Incorrect API key provided: {KEY}.",
        "type": "invalid_request_error",
        "code": "invalid_api_key",
    }
    server.replies.append(Reply(status=401, error=error))
    with pytest.raises(ServiceError) as err:
        List_(query=QUERY, max=3, ctx=make_ctx(base_url=server.url, api_key=KEY, model="tiny-llm", max_retries=0))
    message = str(err.value)
    assert "List" in message and server.url in message and "tiny-llm" in message and "API key" in message
    assert KEY not in message and KEY not in repr(err.value.__cause__) and err.value.__cause__ is None


def test_server_error_message_is_passed_on_without_the_key(server: FakeServer) -> None:
    error = {"message": f"model 'nope' not loaded (key {KEY})", "type": "invalid_request_error", "code": None}
    server.replies.append(Reply(status=400, error=error))
    with pytest.raises(ServiceError, match="HTTP 400") as err:
        List_(query=QUERY, max=3, ctx=make_ctx(base_url=server.url, api_key=KEY, model="nope", max_retries=0))
    assert "not loaded" in str(err.value) and KEY not in str(err.value)


def test_no_key_for_openai_itself_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match=r"no API key.*OPENAI_API_KEY") as err:
        List_(query=QUERY, max=3, ctx=make_ctx())
    message = str(err.value)
    assert message.startswith("List: ") and "https://api.openai.com/v1" in message
    assert "List option api_key" in message


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"timeout": 0}, "timeout must be positive"),
        ({"max_retries": -1}, "max_retries and temperature 0 or more"),
        ({"temperature": -0.5}, "max_retries and temperature 0 or more"),
    ],
)
def test_bad_settings_are_list_config_errors(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        List_(query=QUERY, max=3, ctx=make_ctx(base_url="http://127.0.0.1:9/v1", **options))
    assert str(err.value).startswith("List: ")


def test_a_setting_that_is_not_a_number_is_refused_where_it_is_given() -> None:
    with pytest.raises(ConfigError, match=r"List option 'timeout' must be a number \(float\), got 'soon'"):
        make_ctx(base_url="http://127.0.0.1:9/v1", timeout="soon")


# --- against the planner's scripted server: List fails and retries as the planner does ----------


def test_scripted_server_list_is_parsed() -> None:
    with serve_scripted() as llm:
        llm.script(["1. Sheldon Cooper\n2. Leonard Hofstadter\n3. Penny"])
        items = List_(query=QUERY, max=5, ctx=make_ctx(base_url=llm.url, api_key=KEY, model="tiny-llm"))
        assert items == ["Sheldon Cooper", "Leonard Hofstadter", "Penny"]
        (request,) = llm.requests
        assert request.path == "/v1/chat/completions"
        assert request.body["model"] == "tiny-llm" and request.body["temperature"] == 0
        assert "max_tokens" not in request.body  # no cut-off for long lists: the server's default
        assert request.body["messages"][0] == {"role": "system", "content": SYSTEM_PROMPT}


def test_scripted_rate_limit_then_success_is_retried() -> None:
    with serve_scripted() as llm:
        llm.script([Scripted.rate_limited(), "a\nb"])
        assert List_(query=QUERY, max=5, ctx=make_ctx(base_url=llm.url, max_retries=2)) == ["a", "b"]
        assert len(llm.requests) == 2


def test_scripted_server_error_then_success_is_retried() -> None:
    with serve_scripted() as llm:
        llm.script([Scripted.server_error(), "a"])
        assert List_(query=QUERY, max=5, ctx=make_ctx(base_url=llm.url, max_retries=1)) == ["a"]
        assert len(llm.requests) == 2


def test_scripted_rate_limited_forever_names_list_the_url_and_the_retries() -> None:
    with serve_scripted() as llm:
        llm.script([Scripted.rate_limited()] * 4)
        ctx = make_ctx(base_url=llm.url, api_key=KEY, model="tiny-llm", max_retries=1)
        with pytest.raises(ServiceError, match="HTTP 429") as err:
            List_(query=QUERY, max=5, ctx=ctx)
        assert len(llm.requests) == 2
    message = str(err.value)
    assert message.startswith(f"List: the LLM server at {llm.url} (model 'tiny-llm')")
    assert "after 1 retry (2 requests made)" in message and KEY not in message


def test_scripted_slow_server_times_out() -> None:
    with serve_scripted() as llm:
        llm.script([Scripted.slow(3, "late")])
        ctx = make_ctx(base_url=llm.url, model="tiny-llm", timeout=0.4, max_retries=0)
        start = time.perf_counter()
        with pytest.raises(ServiceError) as err:
            List_(query=QUERY, max=5, ctx=ctx)
        assert time.perf_counter() - start < 2
    message = str(err.value)
    assert message.startswith(f"List: the LLM server at {llm.url} (model 'tiny-llm')")
    assert "did not answer within 0.4 s (List option timeout)" in message


def test_scripted_garbage_and_empty_answers_are_service_errors() -> None:
    with serve_scripted() as llm:
        llm.script([Scripted.garbage(), Scripted(raw=b'{"object": "chat.completion", "choices": []}'), ""])
        ctx = make_ctx(base_url=llm.url, model="tiny-llm", max_retries=0)
        for expected in ("not JSON", "no choices", "returned no text"):
            with pytest.raises(ServiceError, match=expected) as err:
                List_(query=QUERY, max=5, ctx=ctx)
            assert str(err.value).startswith(f"List: the LLM server at {llm.url} (model 'tiny-llm')")


def test_scripted_unknown_model_says_what_to_check() -> None:
    with serve_scripted() as llm:
        llm.script([Scripted.error(404, "The model 'nope' does not exist")])
        with pytest.raises(ServiceError, match="HTTP 404") as err:
            List_(query=QUERY, max=5, ctx=make_ctx(base_url=llm.url, model="nope", max_retries=0))
    message = str(err.value)
    assert message.startswith("List: ") and llm.url in message and "'nope'" in message
    assert "check the model name (List option model)" in message and "List option base_url" in message


def registry() -> Registry:
    reg = Registry()
    reg.register(List_)
    reg.register(Result)
    return reg


PROGRAM = f"LIST0=LIST(query='{QUERY}', max=3)\nFINAL_RESULT=Result(var=LIST0)"


def test_through_interpreter(server: FakeServer) -> None:
    server.replies.append(Reply("Sheldon\nLeonard\nPenny\nHoward"))
    runtime = Runtime(device_request="cpu", modules={"List": {"base_url": server.url, "api_key": KEY}})
    trace = Interpreter(registry(), runtime).run(PROGRAM, {})
    assert trace.result == ["Sheldon", "Leonard", "Penny"]


def test_unreachable_through_interpreter_is_a_step_error() -> None:
    url = f"http://127.0.0.1:{closed_port()}/v1"
    runtime = Runtime(modules={"List": {"base_url": url, "api_key": KEY, "timeout": 2, "max_retries": 0}})
    with pytest.raises(StepError) as err:
        Interpreter(registry(), runtime).run(PROGRAM, {})
    assert "List" in str(err.value) and url in str(err.value) and KEY not in str(err.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("red, green , blue", ["red", "green", "blue"]),
        ("1. Paris\n2. Rome\n3. Paris", ["Paris", "Rome"]),
        ("(1) 'Mercury'\n(2) “Venus”;\n- Earth,", ["Mercury", "Venus", "Earth"]),
        ("## Mars\n> Jupiter", ["Mars", "Jupiter"]),
        ("", []),
        ("\n  \n", []),
    ],
)
def test_parse_items(text: str, expected: list[str]) -> None:
    assert parse_items(text) == expected


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="max must be at least 1"):
        List_(query=QUERY, max=0, ctx=make_ctx())
    with pytest.raises(ValueError, match="query is empty"):
        List_(query=" ", max=2, ctx=make_ctx())


def test_import_does_not_import_openai_or_torch() -> None:
    code = (
        "import sys, visprog.modules.knowledge; "
        "assert 'openai' not in sys.modules and 'torch' not in sys.modules, sorted(sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


@pytest.mark.slow
def test_real_llm_lists_big_bang_theory_characters() -> None:
    """Needs OPENAI_API_KEY (or OPENAI_BASE_URL) and network; uses the real LLM."""
    import os

    if not (os.environ.get("OPENAI_API_KEY") or os.environ.get("OPENAI_BASE_URL")):
        pytest.skip("no LLM server configured")
    items = List_(query=QUERY, max=7, ctx=make_ctx())
    assert 3 <= len(items) <= 7
    assert any("sheldon" in item.lower() for item in items)


def test_the_planners_llm_settings_are_used_when_list_has_none(server: FakeServer) -> None:
    """A config file's [llm] table (Runtime.llm) reaches List."""
    server.replies.append(Reply("- Sheldon\n- Leonard"))
    runtime = Runtime(llm={"model": "from-llm-table", "base_url": server.url, "timeout": 5})
    ctx = Context(runtime, RunCache(), "List", List_.backends, List_.default_backend)
    assert List_(query="characters", max=5, ctx=ctx) == ["Sheldon", "Leonard"]
    assert server.requests[-1]["body"]["model"] == "from-llm-table"


def test_literal_max_and_query_are_checked_before_anything_runs() -> None:
    from tests.fakes import check

    registry = Registry()
    registry.register(List_)
    check("X=List(query='colours', max=1)", registry=registry)
    with pytest.raises(visprog.ProgramCheckError) as info:
        check("X=List(query=' ', max=0)", registry=registry)
    assert [(d.column, d.message) for d in info.value.diagnostics] == [
        (14, "argument 'query' of List: needs something to list, got ' '"),
        (23, "argument 'max' of List: must be at least 1, got 0"),
    ]
