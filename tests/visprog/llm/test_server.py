"""The OpenAI-compatible client: the real ``openai`` client against a scripted server on 127.0.0.1."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.llm_server import Reply, ScriptedServer
from tests.servers import closed_port
from visprog.errors import ConfigError, ServiceError
from visprog.llm import LLMClient, LLMConfig, OpenAIClient, flatten
from visprog.llm import server as server_module

KEY = "sk-test-secret-0123456789"
PROGRAM = "BOX0=Loc(image=IMAGE, object='cat')\nFINAL_RESULT=Result(var=BOX0)"
MESSAGES = [
    {"role": "system", "content": "You write VisProg programs."},
    {"role": "user", "content": "Question: Is there a dog?"},
    {"role": "assistant", "content": "BOX0=Loc(image=IMAGE, object='dog')"},
    {"role": "user", "content": "Question: Where is the cat?"},
]


def client(server: ScriptedServer, **options: Any) -> OpenAIClient:
    options.setdefault("base_url", server.url)
    options.setdefault("max_retries", 0)
    options.setdefault("timeout", 5.0)
    return OpenAIClient(LLMConfig(**options))


# --- requests ---------------------------------------------------------------------


def test_chat_sends_the_messages_model_and_sampling_options(llm_server: ScriptedServer) -> None:
    llm_server.script([PROGRAM])
    llm = client(llm_server, model="tiny-llm", api_key=KEY, temperature=0.3, max_tokens=77, stop=["\n\n"])
    assert llm.complete(MESSAGES) == [PROGRAM]
    (request,) = llm_server.requests
    assert request.path == "/v1/chat/completions"
    assert request.headers["authorization"] == f"Bearer {KEY}"
    body = request.body
    assert body["messages"] == MESSAGES
    assert body["model"] == "tiny-llm"
    assert body["temperature"] == 0.3 and body["max_tokens"] == 77 and body["stop"] == ["\n\n"]
    assert "n" not in body


def test_temperature_argument_overrides_the_configured_one(llm_server: ScriptedServer) -> None:
    llm_server.script(["a", "b"])
    llm = client(llm_server, temperature=0.2)
    llm.complete(MESSAGES, temperature=0.9)
    llm.complete(MESSAGES)
    assert [r.body["temperature"] for r in llm_server.requests] == [0.9, 0.2]
    assert "stop" not in llm_server.requests[0].body


def test_model_from_the_environment_else_the_default(
    llm_server: ScriptedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    llm_server.script(["a", "b", "c"])
    client(llm_server).complete(MESSAGES)
    monkeypatch.setenv("VISPROG_LLM_MODEL", "env-llm")
    client(llm_server).complete(MESSAGES)
    client(llm_server, model="argument-llm").complete(MESSAGES)
    assert [r.body["model"] for r in llm_server.requests] == ["gpt-4o-mini", "env-llm", "argument-llm"]


def test_n_replies_from_one_request(llm_server: ScriptedServer) -> None:
    llm_server.script([["one", "two", "three"]])
    assert client(llm_server).complete(MESSAGES, n=3) == ["one", "two", "three"]
    (request,) = llm_server.requests
    assert request.body["n"] == 3


def test_a_server_that_ignores_n_gets_one_request_per_reply(llm_server: ScriptedServer) -> None:
    llm_server.script(["one", "two", "three", "four", "five"])
    llm = client(llm_server)
    assert llm.complete(MESSAGES, n=3) == ["one", "two", "three"]
    assert [r.body.get("n") for r in llm_server.requests] == [3, None, None]
    # learnt: the next n > 1 goes straight to separate requests
    assert llm.complete(MESSAGES, n=2) == ["four", "five"]
    assert [r.body.get("n") for r in llm_server.requests[3:]] == [None, None]
    assert llm_server.pending == 0


def test_n_must_be_positive(llm_server: ScriptedServer) -> None:
    with pytest.raises(ValueError, match="n must be at least 1"):
        client(llm_server).complete(MESSAGES, n=0)
    assert llm_server.requests == []


def test_completion_style_sends_the_flattened_prompt(llm_server: ScriptedServer) -> None:
    llm_server.script([["x", "y"]])
    llm = client(llm_server, style="completion", model="base-llm", stop=["\n\n"])
    assert llm.complete(MESSAGES, n=2) == ["x", "y"]
    (request,) = llm_server.requests
    assert request.path == "/v1/completions"
    assert request.body["prompt"] == flatten(MESSAGES)
    assert "messages" not in request.body
    assert request.body["model"] == "base-llm" and request.body["n"] == 2 and request.body["stop"] == ["\n\n"]


# --- settings ---------------------------------------------------------------------


def test_base_url_and_key_from_the_environment(llm_server: ScriptedServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", llm_server.url)
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    llm_server.script(["ok"])
    llm = OpenAIClient(LLMConfig(max_retries=0))
    assert llm.complete(MESSAGES) == ["ok"]
    assert llm_server.requests[0].headers["authorization"] == f"Bearer {KEY}"
    assert llm.base_url == llm_server.url and llm_server.url in llm.identity


def test_arguments_win_over_the_environment(llm_server: ScriptedServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", f"http://127.0.0.1:{closed_port()}/v1")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-the-environment")
    llm_server.script(["ok"])
    assert client(llm_server, api_key=KEY).complete(MESSAGES) == ["ok"]
    assert llm_server.requests[0].headers["authorization"] == f"Bearer {KEY}"


def test_a_local_server_needs_no_key(llm_server: ScriptedServer) -> None:
    llm_server.script(["ok"])
    assert client(llm_server).complete(MESSAGES) == ["ok"]
    assert llm_server.requests[0].headers["authorization"].startswith("Bearer ")


def test_openai_itself_without_a_key_is_a_config_error() -> None:
    llm = OpenAIClient(LLMConfig(model="gpt-4o-mini"))
    assert llm.identity == "openai-chat:gpt-4o-mini@https://api.openai.com/v1"  # no key needed for the cache key
    with pytest.raises(ConfigError, match=r"no API key.*OPENAI_API_KEY"):
        llm.complete(MESSAGES)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"style": "poem"}, "style must be one of chat, completion"),
        ({"timeout": 0}, "timeout must be a positive"),
        ({"max_retries": -1}, "max_retries must be 0 or more"),
        ({"max_tokens": 0}, "max_tokens must be at least 1"),
        ({"temperature": -1}, "temperature must be 0 or more"),
    ],
)
def test_bad_settings(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        LLMConfig(**options)


def test_identity_is_stable_names_model_and_server_and_never_the_key(llm_server: ScriptedServer) -> None:
    one = client(llm_server, model="tiny-llm", api_key=KEY)
    two = client(llm_server, model="tiny-llm", api_key="sk-another-key-987654321")
    assert one.identity == two.identity == f"openai-chat:tiny-llm@{llm_server.url}"
    assert client(llm_server, model="other-llm").identity != one.identity
    assert client(llm_server, model="tiny-llm", style="completion").identity != one.identity
    assert KEY not in one.identity and KEY not in repr(one) and KEY not in repr(one.config)
    assert isinstance(one, LLMClient)


# --- failures ---------------------------------------------------------------------


def test_a_slow_server_times_out(llm_server: ScriptedServer) -> None:
    llm_server.script([Reply.slow(3, "late")])
    llm = client(llm_server, model="tiny-llm", api_key=KEY, timeout=0.5, max_retries=0)
    start = time.perf_counter()
    with pytest.raises(ServiceError, match=r"did not answer within 0\.5 s") as err:
        llm.complete(MESSAGES)
    assert time.perf_counter() - start < 2
    assert llm_server.url in str(err.value) and "tiny-llm" in str(err.value) and KEY not in str(err.value)


def test_rate_limit_then_success_is_retried(llm_server: ScriptedServer) -> None:
    llm_server.script([Reply.rate_limited(), "ok"])
    assert client(llm_server, max_retries=2).complete(MESSAGES) == ["ok"]
    assert len(llm_server.requests) == 2


def test_server_error_then_success_is_retried(llm_server: ScriptedServer) -> None:
    llm_server.script([Reply.server_error(), "ok"])
    assert client(llm_server, max_retries=1).complete(MESSAGES) == ["ok"]
    assert len(llm_server.requests) == 2


def test_rate_limited_forever_gives_up_after_max_retries(llm_server: ScriptedServer) -> None:
    llm_server.script([Reply.rate_limited()] * 5)
    with pytest.raises(ServiceError, match="HTTP 429") as err:
        client(llm_server, model="tiny-llm", api_key=KEY, max_retries=1).complete(MESSAGES)
    assert len(llm_server.requests) == 2
    assert llm_server.url in str(err.value) and "tiny-llm" in str(err.value)


def test_a_long_retry_after_is_capped(llm_server: ScriptedServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(server_module, "MAX_RETRY_WAIT", 0.05)
    llm_server.script([Reply.rate_limited(retry_after="60"), "ok"])
    start = time.perf_counter()
    assert client(llm_server, max_retries=1).complete(MESSAGES) == ["ok"]
    assert time.perf_counter() - start < 3


def test_garbage_is_a_service_error(llm_server: ScriptedServer) -> None:
    llm_server.script([Reply.garbage()])
    with pytest.raises(ServiceError, match="not JSON") as err:
        client(llm_server, model="tiny-llm").complete(MESSAGES)
    assert llm_server.url in str(err.value) and "tiny-llm" in str(err.value)


def test_an_answer_with_no_choices_is_a_service_error(llm_server: ScriptedServer) -> None:
    llm_server.script([Reply(raw=b'{"object": "chat.completion", "choices": []}')])
    with pytest.raises(ServiceError, match="no choices") as err:
        client(llm_server, model="tiny-llm").complete(MESSAGES)
    assert llm_server.url in str(err.value)


def test_a_choice_without_text_is_an_empty_reply(llm_server: ScriptedServer) -> None:
    choice = b'{"index": 0, "message": {"role": "assistant", "content": null}, "finish_reason": "stop"}'
    llm_server.script(
        [Reply(raw=b'{"id": "x", "object": "chat.completion", "created": 0, "model": "m", "choices": [%s]}' % choice)]
    )
    assert client(llm_server).complete(MESSAGES) == [""]


def test_an_unreachable_server_fails_fast_and_clearly() -> None:
    url = f"http://127.0.0.1:{closed_port()}/v1"
    llm = OpenAIClient(LLMConfig(base_url=url, api_key=KEY, model="tiny-llm", timeout=2, max_retries=0))
    start = time.perf_counter()
    with pytest.raises(ServiceError, match="could not be reached") as err:
        llm.complete(MESSAGES)
    assert time.perf_counter() - start < 5
    assert url in str(err.value) and "tiny-llm" in str(err.value) and KEY not in str(err.value)


def test_a_rejected_key_is_never_echoed(llm_server: ScriptedServer) -> None:
    llm_server.script([Reply.error(401, f"Incorrect API key provided: {KEY}.")])
    with pytest.raises(ServiceError, match="HTTP 401") as err:
        client(llm_server, model="tiny-llm", api_key=KEY).complete(MESSAGES)
    message = str(err.value)
    assert llm_server.url in message and "tiny-llm" in message and "API key" in message
    assert KEY not in message and KEY not in repr(err.value) and err.value.__cause__ is None


def test_a_server_message_is_passed_on_without_the_key(llm_server: ScriptedServer) -> None:
    llm_server.script([Reply.error(400, f"model 'nope' not loaded (key {KEY})")])
    with pytest.raises(ServiceError, match="HTTP 400") as err:
        client(llm_server, model="nope", api_key=KEY).complete(MESSAGES)
    assert "not loaded" in str(err.value) and "***" in str(err.value) and KEY not in str(err.value)


def test_an_unscripted_request_fails_clearly(llm_server: ScriptedServer) -> None:
    with pytest.raises(ServiceError, match="no scripted reply left"):
        client(llm_server).complete(MESSAGES)


def test_errors_name_the_caller_and_its_options(llm_server: ScriptedServer) -> None:
    """A module asking through the client (List) gets errors that start with its name and hint at its options."""
    llm_server.script([Reply.error(401, f"Incorrect API key provided: {KEY}."), Reply.slow(3, "late")])
    llm = client(llm_server, model="tiny-llm", api_key=KEY, timeout=0.5)
    llm = OpenAIClient(llm.config, who="List", option="List option")
    with pytest.raises(ServiceError) as err:
        llm.complete(MESSAGES)
    assert str(err.value) == (
        f"List: the LLM server at {llm_server.url} (model 'tiny-llm') refused the API key (HTTP 401): "
        "check OPENAI_API_KEY or the List option api_key"
    )
    with pytest.raises(
        ServiceError, match=r"^List: .* did not answer within 0\.5 s \(List option timeout\); 1 request made$"
    ):
        llm.complete(MESSAGES)
    with pytest.raises(ConfigError, match=r"^List: no API key .*the List option api_key"):
        OpenAIClient(LLMConfig(), who="List", option="List option").complete(MESSAGES)
    with pytest.raises(ValueError, match=r"^List: n must be"):
        llm.complete(MESSAGES, n=0)


def test_max_tokens_none_is_not_sent(llm_server: ScriptedServer) -> None:
    llm_server.script(["ok"])
    assert client(llm_server, max_tokens=None).complete(MESSAGES) == ["ok"]
    assert "max_tokens" not in llm_server.requests[0].body


def test_fingerprint_tells_settings_apart_and_never_holds_the_key(llm_server: ScriptedServer) -> None:
    one = client(llm_server, model="tiny-llm", api_key=KEY)
    assert one.fingerprint == client(llm_server, model="tiny-llm", api_key=KEY).fingerprint
    assert one.fingerprint != client(llm_server, model="tiny-llm", api_key="sk-another-key-987654321").fingerprint
    assert one.fingerprint != client(llm_server, model="tiny-llm", api_key=KEY, timeout=1.0).fingerprint
    assert one.fingerprint != OpenAIClient(one.config, who="List").fingerprint
    assert KEY not in repr(one.fingerprint)
    hash(one.fingerprint)


# --- tries again --------------------------------------------------------------------


def test_the_servers_retry_after_is_waited_for(llm_server: ScriptedServer) -> None:
    llm_server.script([Reply.rate_limited(retry_after="0.6"), "ok"])
    start = time.perf_counter()
    assert client(llm_server, max_retries=1).complete(MESSAGES) == ["ok"]
    assert 0.55 < time.perf_counter() - start < 3
    assert len(llm_server.requests) == 2


def test_retry_after_in_milliseconds_and_as_a_date(llm_server: ScriptedServer) -> None:
    llm_server.script([Reply(status=503, headers=(("retry-after-ms", "10"),)), "ok"])
    assert client(llm_server, max_retries=1).complete(MESSAGES) == ["ok"]
    llm_server.script([Reply(status=503, headers=(("Retry-After", "Wed, 21 Oct 2015 07:28:00 GMT"),)), "ok"])
    start = time.perf_counter()
    assert client(llm_server, max_retries=1).complete(MESSAGES) == ["ok"]  # a date in the past: at once
    assert time.perf_counter() - start < 2


def test_the_server_can_say_whether_to_try_again(llm_server: ScriptedServer) -> None:
    llm_server.script([Reply(status=503, headers=(("x-should-retry", "false"),), message="down for maintenance")])
    with pytest.raises(ServiceError, match="HTTP 503"):
        client(llm_server, max_retries=2).complete(MESSAGES)
    assert len(llm_server.requests) == 1
    llm_server.script([Reply(status=400, headers=(("x-should-retry", "true"), ("Retry-After", "0"))), "ok"])
    assert client(llm_server, max_retries=1).complete(MESSAGES) == ["ok"]
    assert len(llm_server.requests) == 3


def test_a_refused_request_is_not_tried_again(llm_server: ScriptedServer) -> None:
    llm_server.script([Reply.error(400, "context length exceeded"), "never sent"])
    with pytest.raises(ServiceError, match="HTTP 400") as err:
        client(llm_server, max_retries=3).complete(MESSAGES)
    assert err.value.per_request and len(llm_server.requests) == 1


def test_lost_connections_are_tried_again_with_growing_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    waits: list[float] = []
    monkeypatch.setattr(server_module.time, "sleep", waits.append)
    llm = OpenAIClient(LLMConfig(base_url=f"http://127.0.0.1:{closed_port()}/v1", model="m", max_retries=5))
    with pytest.raises(ServiceError, match="could not be reached"):
        llm.complete(MESSAGES)
    assert len(waits) == 5  # the openai client itself tries once: the retries are visprog's
    for i, wait in enumerate(waits):
        full = min(server_module.FIRST_RETRY_WAIT * 2**i, server_module.MAX_RETRY_WAIT)
        assert 0.75 * full <= wait <= full, (i, wait)
    assert waits[-1] <= server_module.MAX_RETRY_WAIT


def test_other_errors_are_not_tried_again() -> None:
    assert server_module.retry_wait(ValueError("not a request failure"), 0) is None
