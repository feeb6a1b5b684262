"""LLM backends: the real ``openai`` client against a scripted server on 127.0.0.1, and a tiny local LM."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.llm_server import Reply, ScriptedServer
from visprog.errors import ConfigError, ModelUnavailableError, ServiceError
from visprog.llm import clients as backends
from visprog.llm.clients import (
    LLMBackend,
    LLMConfig,
    OpenAIBackend,
    TransformersBackend,
    backend_from_options,
    flatten,
)

KEY = "sk-test-secret-0123456789"
PROGRAM = "BOX0=Loc(image=IMAGE, object='cat')\nFINAL_RESULT=Result(var=BOX0)"
MESSAGES = [
    {"role": "system", "content": "You write VisProg programs."},
    {"role": "user", "content": "Question: Is there a dog?"},
    {"role": "assistant", "content": "BOX0=Loc(image=IMAGE, object='dog')"},
    {"role": "user", "content": "Question: Where is the cat?"},
]


def closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def backend(server: ScriptedServer, **options: Any) -> OpenAIBackend:
    options.setdefault("base_url", server.url)
    options.setdefault("max_retries", 0)
    options.setdefault("timeout", 5.0)
    return OpenAIBackend(LLMConfig(**options))


# --- requests ---------------------------------------------------------------------


def test_chat_sends_the_messages_model_and_sampling_options(llm_server: ScriptedServer) -> None:
    llm_server.script([PROGRAM])
    llm = backend(llm_server, model="tiny-llm", api_key=KEY, temperature=0.3, max_tokens=77, stop=["\n\n"])
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
    llm = backend(llm_server, temperature=0.2)
    llm.complete(MESSAGES, temperature=0.9)
    llm.complete(MESSAGES)
    assert [r.body["temperature"] for r in llm_server.requests] == [0.9, 0.2]
    assert "stop" not in llm_server.requests[0].body


def test_model_from_the_environment_else_the_default(
    llm_server: ScriptedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    llm_server.script(["a", "b", "c"])
    backend(llm_server).complete(MESSAGES)
    monkeypatch.setenv("VISPROG_LLM_MODEL", "env-llm")
    backend(llm_server).complete(MESSAGES)
    backend(llm_server, model="argument-llm").complete(MESSAGES)
    assert [r.body["model"] for r in llm_server.requests] == ["gpt-4o-mini", "env-llm", "argument-llm"]


def test_n_replies_from_one_request(llm_server: ScriptedServer) -> None:
    llm_server.script([["one", "two", "three"]])
    assert backend(llm_server).complete(MESSAGES, n=3) == ["one", "two", "three"]
    (request,) = llm_server.requests
    assert request.body["n"] == 3


def test_a_server_that_ignores_n_gets_one_request_per_reply(llm_server: ScriptedServer) -> None:
    llm_server.script(["one", "two", "three", "four", "five"])
    llm = backend(llm_server)
    assert llm.complete(MESSAGES, n=3) == ["one", "two", "three"]
    assert [r.body.get("n") for r in llm_server.requests] == [3, None, None]
    # learnt: the next n > 1 goes straight to separate requests
    assert llm.complete(MESSAGES, n=2) == ["four", "five"]
    assert [r.body.get("n") for r in llm_server.requests[3:]] == [None, None]
    assert llm_server.pending == 0


def test_n_must_be_positive(llm_server: ScriptedServer) -> None:
    with pytest.raises(ValueError, match="n must be at least 1"):
        backend(llm_server).complete(MESSAGES, n=0)
    assert llm_server.requests == []


def test_completion_style_sends_the_flattened_prompt(llm_server: ScriptedServer) -> None:
    llm_server.script([["x", "y"]])
    llm = backend(llm_server, style="completion", model="base-llm", stop=["\n\n"])
    assert llm.complete(MESSAGES, n=2) == ["x", "y"]
    (request,) = llm_server.requests
    assert request.path == "/v1/completions"
    assert request.body["prompt"] == flatten(MESSAGES)
    assert "messages" not in request.body
    assert request.body["model"] == "base-llm" and request.body["n"] == 2 and request.body["stop"] == ["\n\n"]


def test_flatten() -> None:
    assert flatten([{"role": "user", "content": "Question: x\nProgram:\n"}]) == "Question: x\nProgram:\n"
    assert flatten([]) == ""
    assert flatten(MESSAGES) == (
        "You write VisProg programs.\n\n"
        "User:\nQuestion: Is there a dog?\n\n"
        "Assistant:\nBOX0=Loc(image=IMAGE, object='dog')\n\n"
        "User:\nQuestion: Where is the cat?\n\n"
        "Assistant:\n"
    )
    assert flatten(MESSAGES[:3]).endswith("Assistant:\nBOX0=Loc(image=IMAGE, object='dog')")


# --- settings ---------------------------------------------------------------------


def test_base_url_and_key_from_the_environment(llm_server: ScriptedServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", llm_server.url)
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    llm_server.script(["ok"])
    llm = OpenAIBackend(LLMConfig(max_retries=0))
    assert llm.complete(MESSAGES) == ["ok"]
    assert llm_server.requests[0].headers["authorization"] == f"Bearer {KEY}"
    assert llm.base_url == llm_server.url and llm_server.url in llm.identity


def test_arguments_win_over_the_environment(llm_server: ScriptedServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", f"http://127.0.0.1:{closed_port()}/v1")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-the-environment")
    llm_server.script(["ok"])
    assert backend(llm_server, api_key=KEY).complete(MESSAGES) == ["ok"]
    assert llm_server.requests[0].headers["authorization"] == f"Bearer {KEY}"


def test_a_local_server_needs_no_key(llm_server: ScriptedServer) -> None:
    llm_server.script(["ok"])
    assert backend(llm_server).complete(MESSAGES) == ["ok"]
    assert llm_server.requests[0].headers["authorization"].startswith("Bearer ")


def test_openai_itself_without_a_key_is_a_config_error() -> None:
    llm = OpenAIBackend(LLMConfig(model="gpt-4o-mini"))
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
    one = backend(llm_server, model="tiny-llm", api_key=KEY)
    two = backend(llm_server, model="tiny-llm", api_key="sk-another-key-987654321")
    assert one.identity == two.identity == f"openai-chat:tiny-llm@{llm_server.url}"
    assert backend(llm_server, model="other-llm").identity != one.identity
    assert backend(llm_server, model="tiny-llm", style="completion").identity != one.identity
    assert KEY not in one.identity and KEY not in repr(one) and KEY not in repr(one.config)
    assert isinstance(one, LLMBackend)


# --- failures ---------------------------------------------------------------------


def test_a_slow_server_times_out(llm_server: ScriptedServer) -> None:
    llm_server.script([Reply.slow(3, "late")])
    llm = backend(llm_server, model="tiny-llm", api_key=KEY, timeout=0.5, max_retries=0)
    start = time.perf_counter()
    with pytest.raises(ServiceError, match=r"did not answer within 0\.5 s") as err:
        llm.complete(MESSAGES)
    assert time.perf_counter() - start < 2
    assert llm_server.url in str(err.value) and "tiny-llm" in str(err.value) and KEY not in str(err.value)


def test_rate_limit_then_success_is_retried(llm_server: ScriptedServer) -> None:
    llm_server.script([Reply.rate_limited(), "ok"])
    assert backend(llm_server, max_retries=2).complete(MESSAGES) == ["ok"]
    assert len(llm_server.requests) == 2


def test_server_error_then_success_is_retried(llm_server: ScriptedServer) -> None:
    llm_server.script([Reply.server_error(), "ok"])
    assert backend(llm_server, max_retries=1).complete(MESSAGES) == ["ok"]
    assert len(llm_server.requests) == 2


def test_rate_limited_forever_gives_up_after_max_retries(llm_server: ScriptedServer) -> None:
    llm_server.script([Reply.rate_limited()] * 5)
    with pytest.raises(ServiceError, match="HTTP 429") as err:
        backend(llm_server, model="tiny-llm", api_key=KEY, max_retries=1).complete(MESSAGES)
    assert len(llm_server.requests) == 2
    assert llm_server.url in str(err.value) and "tiny-llm" in str(err.value)


def test_a_long_retry_after_is_capped(llm_server: ScriptedServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backends, "MAX_RETRY_WAIT", 0.05)
    llm_server.script([Reply.rate_limited(retry_after="60"), "ok"])
    start = time.perf_counter()
    assert backend(llm_server, max_retries=1).complete(MESSAGES) == ["ok"]
    assert time.perf_counter() - start < 3


def test_garbage_is_a_service_error(llm_server: ScriptedServer) -> None:
    llm_server.script([Reply.garbage()])
    with pytest.raises(ServiceError, match="not JSON") as err:
        backend(llm_server, model="tiny-llm").complete(MESSAGES)
    assert llm_server.url in str(err.value) and "tiny-llm" in str(err.value)


def test_an_answer_with_no_choices_is_a_service_error(llm_server: ScriptedServer) -> None:
    llm_server.script([Reply(raw=b'{"object": "chat.completion", "choices": []}')])
    with pytest.raises(ServiceError, match="no choices") as err:
        backend(llm_server, model="tiny-llm").complete(MESSAGES)
    assert llm_server.url in str(err.value)


def test_a_choice_without_text_is_an_empty_reply(llm_server: ScriptedServer) -> None:
    choice = b'{"index": 0, "message": {"role": "assistant", "content": null}, "finish_reason": "stop"}'
    llm_server.script(
        [Reply(raw=b'{"id": "x", "object": "chat.completion", "created": 0, "model": "m", "choices": [%s]}' % choice)]
    )
    assert backend(llm_server).complete(MESSAGES) == [""]


def test_an_unreachable_server_fails_fast_and_clearly() -> None:
    url = f"http://127.0.0.1:{closed_port()}/v1"
    llm = OpenAIBackend(LLMConfig(base_url=url, api_key=KEY, model="tiny-llm", timeout=2, max_retries=0))
    start = time.perf_counter()
    with pytest.raises(ServiceError, match="could not be reached") as err:
        llm.complete(MESSAGES)
    assert time.perf_counter() - start < 5
    assert url in str(err.value) and "tiny-llm" in str(err.value) and KEY not in str(err.value)


def test_a_rejected_key_is_never_echoed(llm_server: ScriptedServer) -> None:
    llm_server.script([Reply.error(401, f"Incorrect API key provided: {KEY}.")])
    with pytest.raises(ServiceError, match="HTTP 401") as err:
        backend(llm_server, model="tiny-llm", api_key=KEY).complete(MESSAGES)
    message = str(err.value)
    assert llm_server.url in message and "tiny-llm" in message and "API key" in message
    assert KEY not in message and KEY not in repr(err.value) and err.value.__cause__ is None


def test_a_server_message_is_passed_on_without_the_key(llm_server: ScriptedServer) -> None:
    llm_server.script([Reply.error(400, f"model 'nope' not loaded (key {KEY})")])
    with pytest.raises(ServiceError, match="HTTP 400") as err:
        backend(llm_server, model="nope", api_key=KEY).complete(MESSAGES)
    assert "not loaded" in str(err.value) and "***" in str(err.value) and KEY not in str(err.value)


def test_an_unscripted_request_fails_clearly(llm_server: ScriptedServer) -> None:
    with pytest.raises(ServiceError, match="no scripted reply left"):
        backend(llm_server).complete(MESSAGES)


def test_errors_name_the_caller_and_its_options(llm_server: ScriptedServer) -> None:
    """A module asking through the backend (List) gets errors that start with its name and hint at its options."""
    llm_server.script([Reply.error(401, f"Incorrect API key provided: {KEY}."), Reply.slow(3, "late")])
    llm = backend(llm_server, model="tiny-llm", api_key=KEY, timeout=0.5)
    llm = OpenAIBackend(llm.config, who="List", option="List option")
    with pytest.raises(ServiceError) as err:
        llm.complete(MESSAGES)
    assert str(err.value) == (
        f"List: the LLM server at {llm_server.url} (model 'tiny-llm') refused the API key (HTTP 401): "
        "check OPENAI_API_KEY or the List option api_key"
    )
    with pytest.raises(ServiceError, match=r"^List: .* did not answer within 0\.5 s \(List option timeout\)$"):
        llm.complete(MESSAGES)
    with pytest.raises(ConfigError, match=r"^List: no API key .*the List option api_key"):
        OpenAIBackend(LLMConfig(), who="List", option="List option").complete(MESSAGES)
    with pytest.raises(ValueError, match=r"^List: n must be"):
        llm.complete(MESSAGES, n=0)


def test_max_tokens_none_is_not_sent(llm_server: ScriptedServer) -> None:
    llm_server.script(["ok"])
    assert backend(llm_server, max_tokens=None).complete(MESSAGES) == ["ok"]
    assert "max_tokens" not in llm_server.requests[0].body


def test_fingerprint_tells_settings_apart_and_never_holds_the_key(llm_server: ScriptedServer) -> None:
    one = backend(llm_server, model="tiny-llm", api_key=KEY)
    assert one.fingerprint == backend(llm_server, model="tiny-llm", api_key=KEY).fingerprint
    assert one.fingerprint != backend(llm_server, model="tiny-llm", api_key="sk-another-key-987654321").fingerprint
    assert one.fingerprint != backend(llm_server, model="tiny-llm", api_key=KEY, timeout=1.0).fingerprint
    assert one.fingerprint != OpenAIBackend(one.config, who="List").fingerprint
    assert KEY not in repr(one.fingerprint)
    hash(one.fingerprint)


# --- choosing a backend -----------------------------------------------------------


def test_backend_from_options(llm_server: ScriptedServer, tmp_path: Path) -> None:
    server = backend_from_options(model="m", base_url=llm_server.url, style="completion", max_tokens=9, timeout=None)
    assert isinstance(server, OpenAIBackend)
    assert server.config.max_tokens == 9 and server.config.timeout == 60.0 and server.config.style == "completion"
    local = backend_from_options(local=str(tmp_path), max_tokens=7, temperature=0.5, stop=["\n\n"], device="cpu")
    assert isinstance(local, TransformersBackend)
    assert local.max_new_tokens == 7 and local.temperature == 0.5 and local.stop == ["\n\n"]
    assert local.identity == f"transformers:{tmp_path}"
    with pytest.raises(ConfigError, match="base_url cannot be given"):
        backend_from_options(local=str(tmp_path), base_url=llm_server.url)
    with pytest.raises(ConfigError, match="timeout do not apply to a local model"):
        backend_from_options(local=str(tmp_path), timeout=3)
    with pytest.raises(ConfigError, match="device do not apply to an LLM server"):
        backend_from_options(device="cpu")
    with pytest.raises(ConfigError, match="style must be"):
        backend_from_options(style="poem")


def test_import_does_not_import_openai_or_torch() -> None:
    code = (
        "import sys, visprog.llm.clients, visprog.planner.extract, visprog.planner.cache; "
        "assert not {'openai', 'torch', 'transformers'} & set(sys.modules), sorted(sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# --- a local causal LM ------------------------------------------------------------

WORDS = [f"w{i:02d}" for i in range(40)]
LOCAL_MESSAGES = [
    {"role": "system", "content": "w01 w02 w03"},
    {"role": "user", "content": "w04 w05 w06 w07"},
    {"role": "assistant", "content": "w08 w09"},
    {"role": "user", "content": "w10 w11 w12 w13"},
]
TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }} {% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


def _save_tiny_lm(folder: Path, chat_template: str | None = None) -> Path:
    """A tiny random GPT-2 with a word-level tokenizer, saved to ``folder``. Generation never ends early."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    vocab = ["[UNK]", "[PAD]", "[EOS]", "system:", "user:", "assistant:", "User:", "Assistant:", *WORDS]
    core = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(vocab)}, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]", pad_token="[PAD]", eos_token="[EOS]")
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=len(vocab),
        n_positions=128,
        n_embd=32,
        n_layer=2,
        n_head=2,
        initializer_range=1.0,
        bos_token_id=None,
        eos_token_id=None,
    )
    GPT2LMHeadModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _save_tiny_lm(tmp_path_factory.mktemp("tiny-lm"))


def _spy_on_prompts(llm: TransformersBackend, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    model, tokenizer = llm._load()
    prompts: list[str] = []
    generate = model.generate

    def spy(**kwargs: Any) -> Any:
        prompts.append(tokenizer.decode(kwargs["input_ids"][0]))
        return generate(**kwargs)

    monkeypatch.setattr(model, "generate", spy)
    return prompts


def test_local_greedy_is_deterministic_and_decodes_only_new_tokens(tiny_lm: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    llm = TransformersBackend(str(tiny_lm), device="cpu", max_new_tokens=6)
    replies = llm.complete(LOCAL_MESSAGES, n=3)
    assert len(replies) == 3 and len(set(replies)) == 1
    assert llm.complete(LOCAL_MESSAGES) == replies[:1]
    # the same as generating by hand and decoding the tokens after the prompt
    tokenizer = AutoTokenizer.from_pretrained(tiny_lm)
    model = AutoModelForCausalLM.from_pretrained(tiny_lm)
    inputs = tokenizer(flatten(LOCAL_MESSAGES), return_tensors="pt")
    with torch.inference_mode():
        output = model.generate(**inputs, max_new_tokens=6, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    expected = tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert replies[0] == expected
    assert 0 < len(replies[0].split()) <= 6
    assert llm._load() is llm._load()  # loaded once


def test_local_sampling_returns_n_replies(tiny_lm: Path) -> None:
    import torch

    torch.manual_seed(0)
    replies = TransformersBackend(str(tiny_lm), device="cpu", max_new_tokens=8).complete(
        LOCAL_MESSAGES, n=4, temperature=1.5
    )
    assert len(replies) == 4 and all(isinstance(r, str) and r for r in replies)
    assert len(set(replies)) > 1


def test_local_stop_strings_cut_the_text(tiny_lm: Path) -> None:
    full = TransformersBackend(str(tiny_lm), device="cpu", max_new_tokens=12).complete(LOCAL_MESSAGES)[0]
    words = full.split()
    # the first word that is new after the first one: stop there
    stop = next(w for i, w in enumerate(words) if i > 0 and w not in words[:i])
    cut = TransformersBackend(str(tiny_lm), device="cpu", max_new_tokens=12, stop=[stop, "never-seen"])
    assert cut.complete(LOCAL_MESSAGES) == [full[: full.index(stop)]]
    assert stop not in cut.complete(LOCAL_MESSAGES)[0]


def test_local_prompt_is_flattened_without_a_chat_template(tiny_lm: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    llm = TransformersBackend(str(tiny_lm), device="cpu", max_new_tokens=2)
    prompts = _spy_on_prompts(llm, monkeypatch)
    llm.complete(LOCAL_MESSAGES)
    assert prompts == [" ".join(flatten(LOCAL_MESSAGES).split())]


def test_local_prompt_uses_the_chat_template(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = _save_tiny_lm(tmp_path / "templated", chat_template=TEMPLATE)
    llm = TransformersBackend(str(folder), device="cpu", max_new_tokens=2)
    prompts = _spy_on_prompts(llm, monkeypatch)
    llm.complete(LOCAL_MESSAGES)
    assert prompts == ["system: w01 w02 w03 user: w04 w05 w06 w07 assistant: w08 w09 user: w10 w11 w12 w13 assistant:"]


def test_a_missing_local_folder_is_model_unavailable(tmp_path: Path) -> None:
    missing = str(tmp_path / "no-such-model")
    with pytest.raises(ModelUnavailableError, match="folder does not exist") as err:
        TransformersBackend(missing).complete(LOCAL_MESSAGES)
    assert err.value.model_id == missing and missing in str(err.value)


def test_an_empty_local_folder_is_model_unavailable(tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailableError, match="no usable model files") as err:
        TransformersBackend(str(tmp_path)).complete(LOCAL_MESSAGES)
    assert str(tmp_path) in str(err.value)


def test_an_uncached_hub_model_offline_is_model_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelUnavailableError, match="HF_HUB_OFFLINE=1") as err:
        TransformersBackend("visprog-tests/no-such-llm").complete(LOCAL_MESSAGES)
    assert "visprog-tests/no-such-llm" in str(err.value) and "hf download visprog-tests/no-such-llm" in str(err.value)
