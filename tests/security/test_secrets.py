"""Secrets never shown: a server URL's user info and query values, and the API key, whole or by its start.

The server URL ``http://alice:PASSWORD@127.0.0.1:PORT/v1?api-key=QUERY`` and the key ``sk-...`` are given to
``--base-url`` and ``$OPENAI_API_KEY``, to a config file, to the Python API, to a module's options and to the web
app's planner; a scripted server refuses the requests and echoes all three in its error. No start of 8 characters
of any of them may appear in standard output, standard error, the logs, the ``--json`` report, the trace (JSON
and HTML), the evaluation records or the web app's status panel. Each test has secrets of its own (the masking
remembers the secrets a process has seen, so a secret shared between tests would prove nothing).
"""

from __future__ import annotations

import io
import json
import logging
import time
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
from PIL import Image as PILImage

from tests.llm_server import Reply, ScriptedServer, llm_server
from tests.servers import clean_llm_env, serve
from visprog.apps.api_service import error_info
from visprog.apps.cli import main
from visprog.apps.webapp_actions import plan_and_run
from visprog.apps.webapp_status import status_panel
from visprog.errors import ConfigError, ServiceError
from visprog.evaluation.engines import WorkerSettings
from visprog.llm.masking import MASK, mask_logs, mask_secrets, mask_url, remember_secret
from visprog.llm.server import LLMConfig, OpenAIClient
from visprog.solving import ask, create_planner

__all__ = ["llm_server"]

MESSAGES = [{"role": "user", "content": "plan"}]
LIST_PROGRAM = "LIST0=List(query='planets', max=3)\nFINAL_RESULT=Result(var=LIST0)"


@dataclass(frozen=True)
class Secrets:
    """A password, a query value and a key, new for each test."""

    password: str
    query: str
    key: str

    @classmethod
    def new(cls) -> Secrets:
        return cls(f"pw{uuid.uuid4().hex}", f"qv{uuid.uuid4().hex}", f"sk-{uuid.uuid4().hex}")

    def url(self, server_url: str) -> str:
        return server_url.replace("http://", f"http://alice:{self.password}@") + f"?api-key={self.query}"

    @property
    def echo(self) -> str:
        """What a careless server says back: the start of the key, the whole key, the password, the query."""
        return (
            f"Incorrect API key provided: {self.key[:12]}****{self.key[-4:]}; you sent {self.key} "
            f"as alice:{self.password} with api-key={self.query}"
        )

    def assert_hidden(self, *texts: str) -> None:
        for text in texts:
            for secret in (self.password, self.query, self.key):
                assert secret[:8] not in text, f"{secret[:8]}... shown in:\n{text}"
            assert "//alice" not in text


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clean_llm_env(monkeypatch, tmp_path / "visprog-cache")


@pytest.fixture
def secret() -> Secrets:
    return Secrets.new()


def cli(*argv: str | Path) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main([str(a) for a in argv], out=out, err=err)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def photo(tmp_path: Path) -> Path:
    path = tmp_path / "photo.png"
    PILImage.new("RGB", (32, 24), "gray").save(path)
    return path


# --- the masking itself ---------------------------------------------------------------------------------------------


def test_a_url_shows_neither_its_user_info_nor_its_query_values() -> None:
    assert (
        mask_url("http://user:pass@host:8000/v1?api-key=abc&v=2#top") == "http://***@host:8000/v1?api-key=***&v=***#top"
    )
    assert mask_url("https://token@example.com/v1") == "https://***@example.com/v1"
    assert mask_url("https://api.openai.com/v1") == "https://api.openai.com/v1"
    assert mask_url("http://host/v1?sk-bare") == "http://host/v1?***"
    text = "the server (http://u:p@h/v1?key=s3cr3t), then http://h/v1?sig=zz, done."
    assert mask_secrets(text) == "the server (http://***@h/v1?key=***), then http://h/v1?sig=***, done."
    started = time.perf_counter()  # a reply of a million characters that looks like schemes is masked at once
    assert mask_secrets("a." * 500_000) == "a." * 500_000
    assert time.perf_counter() - started < 5


def test_a_key_is_masked_whole_or_by_any_start_of_eight_characters() -> None:
    key = f"sk-{uuid.uuid4().hex}"
    echoes = [key, key[:8] + "...", f"key {key[:20]}**** refused", f"'{key[:8]}'"]
    for echo in echoes:
        shown = mask_secrets(echo, [key])
        assert key[:8] not in shown and MASK in shown
    assert mask_secrets(f"a start of 7: {key[:7]}", [key]) == f"a start of 7: {key[:7]}"
    # remembered once, masked everywhere after (as the LLM clients remember theirs)
    remember_secret(key)
    assert mask_secrets(f"echo: {key[:10]}") == f"echo: {MASK}"
    # a short password is masked where it stands alone, not inside other words
    assert mask_secrets("pass1 and pass12", ["pass1"]) == f"{MASK} and pass12"


def test_masked_loggers_hide_secrets_in_their_messages_and_tracebacks(
    secret: Secrets, caplog: pytest.LogCaptureFixture
) -> None:
    mask_logs("tests.security.masked")
    remember_secret(secret.key)
    log = logging.getLogger("tests.security.masked")
    with caplog.at_level(logging.DEBUG, logger="tests.security.masked"):
        try:
            raise RuntimeError(f"refused {secret.key} at {secret.url('http://127.0.0.1:9/v1')}")
        except RuntimeError:
            log.exception("request to %s failed", secret.url("http://127.0.0.1:9/v1"))
    assert "request to http://***@127.0.0.1:9/v1?api-key=*** failed" in caplog.text
    assert "RuntimeError: refused *** at http://***@127.0.0.1:9/v1?api-key=***" in caplog.text
    secret.assert_hidden(caplog.text)


# --- the LLM client -------------------------------------------------------------------------------------------------


def test_llm_errors_logs_identity_and_repr_hide_the_url_secrets_and_the_key(
    llm_server: ScriptedServer, secret: Secrets, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    client = OpenAIClient(LLMConfig(base_url=secret.url(llm_server.url), api_key=secret.key, model="m", max_retries=0))
    llm_server.script([Reply.error(401, secret.echo), Reply.error(500, secret.echo), Reply.error(400, secret.echo)])
    messages = []
    for _ in range(3):
        with pytest.raises(ServiceError) as caught:
            client.complete(MESSAGES)
        messages.append(str(caught.value))
    assert "refused the API key (HTTP 401)" in messages[0] and "HTTP 500" in messages[1] and MASK in messages[2]
    assert f"http://***@127.0.0.1:{llm_server.url.split(':')[2]}" in messages[0] and "?api-key=***" in messages[0]
    assert "HTTP Request: POST" in caplog.text  # the HTTP client logged every request, its URL masked
    secret.assert_hidden(*messages, caplog.text, client.identity, repr(client), repr(client.fingerprint))
    assert llm_server.requests[0].path == "/v1/chat/completions"  # the real URL is the one used


def test_the_query_of_a_base_url_is_sent_with_every_request(secret: Secrets) -> None:
    paths: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0) or 0))
            paths.append(self.path)
            reply = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}}]}
            data = json.dumps(reply).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    with serve(Handler) as url:
        client = OpenAIClient(LLMConfig(base_url=secret.url(f"{url}/v1"), model="m"))
        assert client.complete(MESSAGES) == ["ok"]
    assert paths == [f"/v1/chat/completions?api-key={secret.query}"]


def test_the_python_api_and_its_errors_hide_the_secrets(
    llm_server: ScriptedServer, secret: Secrets, photo: Path
) -> None:
    llm_server.script([Reply.error(400, secret.echo)])
    with pytest.raises(ServiceError) as caught:
        ask(photo, "What is it?", base_url=secret.url(llm_server.url), api_key=secret.key, cache=False, model="m")
    planner = create_planner(base_url=secret.url(llm_server.url), api_key=secret.key, cache=False)
    with pytest.raises(ConfigError) as refused:  # the error names the backend by its identity
        create_planner(base_url=secret.url(llm_server.url), api_key=secret.key, constrain="types")
    assert "cannot be used with openai-chat" in str(refused.value)
    secret.assert_hidden(str(caught.value), repr(planner.backend), planner.backend.identity, str(refused.value))


# --- the command line -----------------------------------------------------------------------------------------------


def test_the_command_line_hides_a_base_url_and_key_in_its_output_json_and_logs(
    llm_server: ScriptedServer,
    secret: Secrets,
    photo: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("OPENAI_API_KEY", secret.key)
    llm_server.script([Reply.error(400, secret.echo), Reply.error(400, secret.echo)])
    argv: list[str | Path] = [
        "ask",
        photo,
        "What is it?",
        "--base-url",
        secret.url(llm_server.url),
        "--model",
        "m",
        "--no-cache",
    ]
    code, out, err = cli(*argv)
    assert code == 1 and "answered HTTP 400" in err and "http://***@127.0.0.1" in err
    code, shown, json_err = cli(*argv, "--json")
    report = json.loads(shown)
    assert code == 1 and report["ok"] is False and "HTTP 400" in report["error"]["message"]
    secret.assert_hidden(out, err, shown, json_err, caplog.text)


def test_a_config_file_server_and_key_stay_hidden(
    llm_server: ScriptedServer, secret: Secrets, photo: Path, tmp_path: Path
) -> None:
    config = tmp_path / "visprog.toml"
    url = secret.url(llm_server.url)
    config.write_text(f'[llm]\nbase_url = "{url}"\napi_key = "{secret.key}"\nmax_retries = 0\nmodel = "m"\n')
    llm_server.script([Reply.error(500, secret.echo)])
    code, out, err = cli("ask", photo, "What is it?", "--config", config, "--no-cache", "--json")
    assert code == 1 and "HTTP 500" in json.loads(out)["error"]["message"]
    secret.assert_hidden(out, err)


def test_a_modules_server_and_key_stay_out_of_the_trace_json_and_page(
    llm_server: ScriptedServer, secret: Secrets, tmp_path: Path
) -> None:
    llm_server.script([Reply.error(500, secret.echo)])
    page = tmp_path / "trace.html"
    options = [f"List.base_url={secret.url(llm_server.url)}", f"List.api_key={secret.key}", "List.max_retries=0"]
    argv: list[str | Path] = ["exec", LIST_PROGRAM, *(a for o in options for a in ("--option", o)), "--trace", page]
    code, out, err = cli(*argv, "--json")
    report = json.loads(out)
    assert code == 1 and "List: the LLM server at http://***@" in report["trace"]["steps"][0]["error"]
    html = page.read_text(encoding="utf-8")
    assert "HTTP 500" in html
    secret.assert_hidden(out, err, html)


def test_evaluation_records_hide_the_secrets(
    llm_server: ScriptedServer, secret: Secrets, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", secret.key)
    PILImage.new("RGB", (32, 24), "gray").save(tmp_path / "a.png")
    data = tmp_path / "items.jsonl"
    data.write_text(json.dumps({"id": "q0", "image": "a.png", "question": "What is it?", "answer": "x"}) + "\n")
    results = tmp_path / "results.jsonl"
    llm_server.script([Reply.error(400, secret.echo)])  # one request refused: the item's failure
    argv: list[str | Path] = [
        "eval",
        data,
        "--task",
        "gqa",
        "-o",
        results,
        "--base-url",
        secret.url(llm_server.url),
        "-q",
    ]
    code, out, err = cli(*argv, "--model", "m", "--no-cache")
    assert code == 0, err
    (record,) = [json.loads(line) for line in results.read_text().splitlines()]
    assert record["failure"] == "plan_parse" and "HTTP 400" in record["error"]
    secret.assert_hidden(out, err, results.read_text())


def test_worker_settings_never_show_a_key_or_the_secrets_of_a_url(secret: Secrets) -> None:
    settings = WorkerSettings(
        planner={"base_url": secret.url("http://127.0.0.1:9/v1"), "api_key": secret.key},
        modules={"List": {"api_key": secret.key}},
        llm={"api_key": secret.key},
    )
    assert "WorkerSettings(planner={'base_url': 'http://***@127.0.0.1:9/v1?api-key=***'" in repr(settings)
    secret.assert_hidden(repr(settings))


# --- the web app and the HTTP API -----------------------------------------------------------------------------------


def test_the_web_app_status_hides_the_secrets(llm_server: ScriptedServer, secret: Secrets, photo: Path) -> None:
    llm_server.script([Reply.error(500, secret.echo)])

    def planner() -> Any:
        url = secret.url(llm_server.url)
        return create_planner(base_url=url, api_key=secret.key, cache=False, model="m", max_retries=0)

    outcome = plan_and_run("What is it?", "gqa", str(photo), planner=planner)
    assert not outcome.ok and "HTTP 500" in outcome.status_html()
    secret.assert_hidden(outcome.message, outcome.status_html())
    # the panel masks any URL it is given, whoever wrote the message
    other = Secrets.new()
    panel = status_panel("error", "Failed", f"at {other.url('http://127.0.0.1:9/v1')}")
    assert "http://***@127.0.0.1:9/v1?api-key=***" in panel
    other.assert_hidden(panel)


def test_the_api_error_body_hides_the_secrets(secret: Secrets) -> None:
    error = ServiceError(f"planner: the LLM server at {secret.url('http://127.0.0.1:9/v1')} failed")
    secret.assert_hidden(json.dumps(error_info(error)))
