"""The client layer's shared parts: the protocol, chat messages as one prompt, choosing a client from options."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.llm_server import ScriptedServer
from visprog.errors import ConfigError
from visprog.llm import LLMClient, LLMConfig, OpenAIClient, TransformersClient, client_from_options, flatten

MESSAGES = [
    {"role": "system", "content": "You write VisProg programs."},
    {"role": "user", "content": "Question: Is there a dog?"},
    {"role": "assistant", "content": "BOX0=Loc(image=IMAGE, object='dog')"},
    {"role": "user", "content": "Question: Where is the cat?"},
]


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


def test_both_clients_follow_the_protocol(tmp_path: Path) -> None:
    assert isinstance(OpenAIClient(LLMConfig(model="m")), LLMClient)
    assert isinstance(TransformersClient(str(tmp_path)), LLMClient)


# --- choosing a client ------------------------------------------------------------


def test_client_from_options(llm_server: ScriptedServer, tmp_path: Path) -> None:
    server = client_from_options(model="m", base_url=llm_server.url, style="completion", max_tokens=9, timeout=None)
    assert isinstance(server, OpenAIClient)
    assert server.config.max_tokens == 9 and server.config.timeout == 60.0 and server.config.style == "completion"
    local = client_from_options(
        local=str(tmp_path), max_tokens=7, temperature=0.5, stop=["\n\n"], device="cpu", dtype="bfloat16"
    )
    assert isinstance(local, TransformersClient)
    assert local.max_new_tokens == 7 and local.temperature == 0.5 and local.stop == ["\n\n"]
    assert local.device == "cpu" and local.dtype == "bfloat16"
    assert local.identity == f"transformers:{tmp_path}"
    with pytest.raises(ConfigError, match="base_url cannot be given"):
        client_from_options(local=str(tmp_path), base_url=llm_server.url)
    with pytest.raises(ConfigError, match="timeout do not apply to a local model"):
        client_from_options(local=str(tmp_path), timeout=3)
    with pytest.raises(ConfigError, match="device do not apply to an LLM server"):
        client_from_options(device="cpu")
    with pytest.raises(ConfigError, match="style must be"):
        client_from_options(style="poem")


def test_import_does_not_import_openai_or_torch() -> None:
    code = (
        "import sys, visprog.llm, visprog.planner.extract, visprog.planner.cache; "
        "assert not {'openai', 'torch', 'transformers'} & set(sys.modules), sorted(sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
