"""Grammars sent to OpenAI-compatible servers (``grammar_format``): the real ``openai`` client against a scripted
server on 127.0.0.1, and llguidance reading the grammar each request carried."""

from __future__ import annotations

import json
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from typing import Any

import llguidance
import pytest
from llguidance.gbnf_to_lark import gbnf_to_lark

from tests.llm_server import Reply, ScriptedServer
from tests.servers import serve
from visprog.errors import ConfigError, ServiceError
from visprog.language.values import Type
from visprog.llm import LLMConfig, OpenAIClient, client_from_options
from visprog.llm.constrained import Completion
from visprog.llm.server import GRAMMAR_FIELDS, SERVER_GRAMMAR_FORMATS, grammar_body
from visprog.planner.constraint import ProgramConstraint
from visprog.running.plugins import default_registry

PROGRAM = "BOX0=Loc(image=IMAGE, object='cat')\nANSWER0=Count(box=BOX0)\nFINAL_RESULT=Result(var=ANSWER0)"
MESSAGES = [
    {"role": "system", "content": "You write VisProg programs."},
    {"role": "user", "content": "Question: How many cats are there?"},
]


class _BuiltOnce(ProgramConstraint):
    """The registry's program grammar as the planner builds it, built once for this file's tests."""

    def grammar(self, syntax: str = "lark") -> str:
        built: dict[str, str] = self.__dict__.setdefault("_built", {})
        if syntax not in built:
            built[syntax] = super().grammar(syntax)
        return built[syntax]


@pytest.fixture(scope="module")
def constraint() -> ProgramConstraint:
    return _BuiltOnce(default_registry(), {"IMAGE": Type.IMAGE}, "grammar")


def client(url: str, **options: Any) -> OpenAIClient:
    return OpenAIClient(LLMConfig(base_url=url, model="tiny", max_retries=0, timeout=5.0, **options))


class _Bytes:
    """A tokenizer of one token per byte (and an end token), for llguidance to match text against a grammar."""

    eos_token_id = 256
    bos_token_id = None
    tokens = [bytes([i]) for i in range(256)] + [b"<eos>"]

    def __call__(self, text: bytes) -> list[int]:
        return list(text)


BYTES = llguidance.LLTokenizer(llguidance.TokenizerWrapper(_Bytes()))


def accepts(gbnf: str, text: str) -> bool:
    """Whether ``text`` is a whole match of the GBNF grammar ``gbnf``, read by llguidance."""
    matcher = llguidance.LLMatcher(BYTES, llguidance.LLMatcher.grammar_from_lark(gbnf_to_lark(gbnf)), log_level=0)
    assert not matcher.is_error(), matcher.get_error()
    return matcher.consume_tokens(list(text.encode())) and matcher.is_accepting()


def sent_grammar(body: dict[str, Any], grammar_format: str) -> Any:
    value: Any = body
    for name in GRAMMAR_FIELDS[grammar_format].split("."):
        value = value[name]
    return value


# --- what a request carries ---------------------------------------------------------------


@pytest.mark.parametrize("style", ["chat", "completion"])
@pytest.mark.parametrize(
    ("grammar_format", "field"),
    [
        ("vllm", {"structured_outputs": {"grammar"}}),
        ("llama.cpp", {"grammar": None}),
        ("sglang", {"ebnf": None}),
    ],
)
def test_the_request_carries_the_program_grammar_in_the_servers_field(
    llm_server: ScriptedServer,
    constraint: ProgramConstraint,
    grammar_format: str,
    field: dict[str, Any],
    style: str,
) -> None:
    llm_server.script([PROGRAM])
    llm = client(llm_server.url, grammar_format=grammar_format, style=style)
    assert llm.constraint_modes == ("grammar",)
    (reply,) = llm.complete(MESSAGES, constraint=constraint)
    assert reply == PROGRAM and isinstance(reply, Completion) and reply.truncated is False
    (request,) = llm_server.requests
    assert request.path == ("/v1/chat/completions" if style == "chat" else "/v1/completions")
    body = request.body
    (top,) = field
    assert top in body and not {"structured_outputs", "grammar", "ebnf", "guided_grammar"} - {top} & set(body)
    if field[top] is not None:
        assert set(body[top]) == field[top]  # nothing else in vLLM's structured_outputs
    grammar = sent_grammar(body, grammar_format)
    assert grammar == constraint.grammar("gbnf") and grammar.startswith("root ::= ")
    # the GBNF is one llguidance reads (as vLLM's guidance backend does), and it is the program language
    assert llguidance.LLMatcher.validate_grammar(llguidance.grammar_from("grammar", grammar)) == ""
    assert llguidance.LLMatcher.validate_grammar(llguidance.LLMatcher.grammar_from_lark(gbnf_to_lark(grammar))) == ""
    assert accepts(grammar, PROGRAM)
    # and the rest of the request is as without a grammar
    assert body["model"] == "tiny" and body["max_tokens"] == 512
    assert (body["messages"] == MESSAGES) if style == "chat" else isinstance(body["prompt"], str)


def test_the_grammar_sent_holds_the_reply_to_valid_programs(constraint: ProgramConstraint) -> None:
    gbnf = constraint.grammar("gbnf")
    assert accepts(gbnf, "BOX0=Loc(image=IMAGE, object='cat')\nFINAL_RESULT=Result(var=BOX0)")
    assert accepts(gbnf, "ANSWER0=Eval(expr=\"'yes' if 2 > 1 else 'no'\")\nFINAL_RESULT=Result(var=ANSWER0)")
    assert not accepts(gbnf, "BOX0=Locate(image=IMAGE, object='cat')\nFINAL_RESULT=Result(var=BOX0)")  # no module
    assert not accepts(gbnf, "BOX0=Loc(image=IMAGE, thing='cat')\nFINAL_RESULT=Result(var=BOX0)")  # no argument
    assert not accepts(gbnf, "BOX0=Loc(image=IMAGE, object='cat')\n")  # no result step
    assert not accepts(gbnf, PROGRAM + "\nBOX1=Loc(image=IMAGE, object='dog')")  # nothing after it


def test_llguidance_reads_eval_placeholders_in_the_gbnf(constraint: ProgramConstraint) -> None:
    gbnf = constraint.grammar("gbnf")
    program = PROGRAM.replace("FINAL_RESULT", "ANSWER1=Eval(expr=\"'yes' if {ANSWER0} > 0 else 'no'\")\nFINAL_RESULT")
    assert accepts(gbnf, program.replace("var=ANSWER0", "var=ANSWER1"))


def test_without_a_grammar_format_nothing_is_added(llm_server: ScriptedServer, constraint: ProgramConstraint) -> None:
    llm_server.script([PROGRAM, PROGRAM])
    llm = client(llm_server.url)
    assert llm.config.grammar_format == "none" and llm.constraint_modes == ()
    (reply,) = llm.complete(MESSAGES)
    assert type(reply) is str
    client(llm_server.url, grammar_format="sglang").complete(MESSAGES)  # no constraint given: no grammar either
    for request in llm_server.requests:
        assert set(request.body) == {"messages", "model", "temperature", "max_tokens"}
    with pytest.raises(ConfigError, match=r"a constrained request needs .* grammar_format \(--grammar-format, \[llm\]"):
        llm.complete(MESSAGES, constraint=constraint)
    assert len(llm_server.requests) == 2  # refused before sending


def test_grammar_body_nests_dotted_fields() -> None:
    assert grammar_body("vllm", "root ::= x") == {"structured_outputs": {"grammar": "root ::= x"}}
    assert grammar_body("llama.cpp", "root ::= x") == {"grammar": "root ::= x"}
    assert grammar_body("sglang", "root ::= x") == {"ebnf": "root ::= x"}
    with pytest.raises(ValueError, match="sends no grammar"):
        grammar_body("none", "root ::= x")
    assert set(GRAMMAR_FIELDS) == set(SERVER_GRAMMAR_FORMATS) - {"none"}


# --- how a reply ended, and refusals ------------------------------------------------------


@pytest.fixture
def cut_short() -> Iterator[str]:
    """A chat server whose every reply stopped at the token limit (``finish_reason: length``)."""

    class Handler(BaseHTTPRequestHandler):
        timeout = 5.0

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0) or 0))
            message = {"role": "assistant", "content": "BOX0=Loc(image=IMAGE, obj"}
            choice = {"index": 0, "message": message, "finish_reason": "length"}
            payload = {"id": "c", "object": "chat.completion", "created": 0, "model": "tiny", "choices": [choice]}
            data = json.dumps(payload).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    with serve(Handler) as url:
        yield f"{url}/v1"


def test_a_reply_cut_at_the_token_limit_is_marked_truncated(cut_short: str, constraint: ProgramConstraint) -> None:
    (reply,) = client(cut_short, grammar_format="vllm").complete(MESSAGES, constraint=constraint)
    assert isinstance(reply, Completion) and reply.truncated and reply == "BOX0=Loc(image=IMAGE, obj"
    (plain,) = client(cut_short).complete(MESSAGES)  # without a grammar the reply is plain text, as before
    assert type(plain) is str


def test_a_server_that_refuses_the_grammar_field_names_the_setting(
    llm_server: ScriptedServer, constraint: ProgramConstraint
) -> None:
    llm_server.script([Reply.error(400, "Unrecognized request argument supplied: grammar")])
    with pytest.raises(ServiceError) as info:
        client(llm_server.url, grammar_format="llama.cpp").complete(MESSAGES, constraint=constraint)
    message = str(info.value)
    assert message.startswith("planner: the LLM server at") and "answered HTTP 400" in message
    assert "carried the program grammar in 'grammar', as grammar_format = 'llama.cpp' says" in message
    assert "(--grammar-format, [llm] grammar_format)" in message
    assert "set grammar_format to vllm or sglang" in message
    assert "set grammar_format to none or plan with --constrain none" in message
    assert info.value.per_request is False  # every request would be refused: about the setting, not this one


def test_another_refusal_of_a_request_with_a_grammar_stays_per_request(
    llm_server: ScriptedServer, constraint: ProgramConstraint
) -> None:
    llm_server.script([Reply.error(400, "This model's maximum context length is 2048 tokens")])
    with pytest.raises(ServiceError) as info:
        client(llm_server.url, grammar_format="sglang").complete(MESSAGES, constraint=constraint)
    assert "maximum context length" in str(info.value) and "'ebnf', as grammar_format = 'sglang'" in str(info.value)
    assert info.value.per_request is True


# --- the setting --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("llamacpp", "must be one of none, vllm, llama.cpp, sglang, got 'llamacpp' (did you mean 'llama.cpp'?)"),
        ("VLLM", "got 'VLLM' (did you mean 'vllm'?)"),
        ("lark", "got 'lark'"),
        (None, "got None"),
    ],
)
def test_a_bad_grammar_format_is_an_error_naming_the_setting(value: Any, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        LLMConfig(grammar_format=value)
    assert str(info.value).startswith("planner: grammar_format (--grammar-format, [llm] grammar_format) must be")
    assert message in str(info.value)


def test_client_from_options_takes_grammar_format_for_a_server_only(tmp_path: Any) -> None:
    server = client_from_options(base_url="http://127.0.0.1:9/v1", grammar_format="sglang")
    assert isinstance(server, OpenAIClient) and server.constraint_modes == ("grammar",)
    assert server.fingerprint != OpenAIClient(LLMConfig(base_url="http://127.0.0.1:9/v1")).fingerprint
    with pytest.raises(ConfigError, match="grammar_format do not apply to a local model"):
        client_from_options(local=str(tmp_path), grammar_format="vllm")
