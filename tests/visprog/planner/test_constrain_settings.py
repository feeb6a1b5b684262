"""``constrain`` and ``grammar_format`` from every place a planner is made: the Python API (``create_planner``,
``solve``), the command line and the config file, ``visprog serve`` and ``visprog eval`` (Ray workers included);
planning against a scripted server that takes grammars."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image as PILImage

from tests import fakes
from tests.llm_server import ScriptedServer
from visprog.apps.cli import main
from visprog.errors import ConfigError
from visprog.llm import OpenAIClient, TransformersClient, client_from_options
from visprog.planner.core import Planner
from visprog.solving import create_planner, solve

GOOD = "BOX0=Loc(image=IMAGE, object='dog')\nANSWER0=Count(box=BOX0)\nFINAL_RESULT=Result(var=ANSWER0)"
GRAMMAR_KEYS = {"structured_outputs", "grammar", "ebnf", "guided_grammar"}


@pytest.fixture
def model_folder(tmp_path: Path) -> str:
    """A local model's folder: nothing loads until a plan is asked for, so the planner's settings can be read."""
    folder = tmp_path / "local-model"
    folder.mkdir()
    return str(folder)


# --- the Python API -----------------------------------------------------------------------


def test_the_default_is_the_strongest_constraint_the_llm_follows(llm_server: ScriptedServer, model_folder: str) -> None:
    assert create_planner(local=model_folder).constrain == "types"
    assert create_planner(base_url=llm_server.url).constrain == "none"
    assert create_planner(base_url=llm_server.url, grammar_format="vllm").constrain == "grammar"


def test_create_planner_takes_constrain(llm_server: ScriptedServer, model_folder: str) -> None:
    local = create_planner(local=model_folder, constrain="none")
    assert isinstance(local.backend, TransformersClient) and local.constrain == "none"
    assert create_planner(local=model_folder, constrain="grammar").constrain == "grammar"
    server = create_planner(base_url=llm_server.url, grammar_format="llama.cpp", constrain="none")
    assert isinstance(server.backend, OpenAIClient) and server.constrain == "none"
    with pytest.raises(ConfigError, match=r"constrain='types' cannot be used with openai-chat:.* it follows grammar"):
        create_planner(base_url=llm_server.url, grammar_format="sglang", constrain="types")
    with pytest.raises(ConfigError, match=r"constrain='grammar' cannot be used with .*\[llm\] grammar_format says"):
        create_planner(base_url=llm_server.url, constrain="grammar")
    with pytest.raises(ConfigError, match=r"constrain must be one of none, grammar, types \(--constrain\)"):
        create_planner(local=model_folder, constrain="strict")


def test_a_plan_on_a_server_with_a_grammar_format_sends_the_program_grammar(llm_server: ScriptedServer) -> None:
    llm_server.script([GOOD])
    backend = client_from_options(base_url=llm_server.url, model="tiny", grammar_format="vllm", max_retries=0)
    planner = Planner(backend, registry=fakes.registry(), cache=False)
    plan = planner.plan("gqa", "How many dogs are there?")
    assert plan.program == GOOD
    (request,) = llm_server.requests
    grammar = request.body["structured_outputs"]["grammar"]
    assert grammar.startswith("root ::= ") and '"Loc("' in grammar and '"FINAL_RESULT=Result(var="' in grammar
    assert request.body["messages"][-1]["content"] == "Question: How many dogs are there?"


def test_solve_passes_constrain_and_grammar_format_on(llm_server: ScriptedServer) -> None:
    llm_server.script([GOOD, GOOD])
    image = PILImage.new("RGB", (64, 48))
    options: dict[str, Any] = {
        "registry": fakes.registry(),
        "base_url": llm_server.url,
        "model": "tiny",
        "cache": False,
    }
    assert solve("gqa", "How many dogs?", {"IMAGE": image}, grammar_format="sglang", **options).result == 1
    assert solve("gqa", "How many dogs?", {"IMAGE": image}, grammar_format="sglang", constrain="none", **options)
    constrained, free = (r.body for r in llm_server.requests)
    assert constrained["ebnf"].startswith("root ::= ")
    assert not GRAMMAR_KEYS & set(free)  # --constrain none: the request is as without a grammar format


# --- the command line and the config file ---------------------------------------------------


def run(*argv: Any) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main([str(a) for a in argv], out, err)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def photo(tmp_path: Path) -> Path:
    path = tmp_path / "photo.png"
    PILImage.new("RGB", (8, 8)).save(path)
    return path


def ask(server: ScriptedServer, photo: Path, *extra: Any) -> tuple[int, str]:
    code, _, err = run("ask", photo, "How many dogs?", "--plan-only", "--no-cache", "--base-url", server.url, *extra)
    return code, err


def test_grammar_format_on_the_command_line_and_in_the_config_file(
    llm_server: ScriptedServer, photo: Path, tmp_path: Path
) -> None:
    llm_server.script([GOOD] * 4)
    config = tmp_path / "visprog.toml"
    config.write_text('[llm]\nmodel = "tiny"\ngrammar_format = "vllm"\n')
    assert ask(llm_server, photo, "--model", "tiny", "--grammar-format", "llama.cpp") == (0, "")
    assert ask(llm_server, photo, "--config", config) == (0, "")
    assert ask(llm_server, photo, "--config", config, "--grammar-format", "sglang") == (0, "")  # the flag wins
    assert ask(llm_server, photo, "--config", config, "--constrain", "none") == (0, "")
    bodies = [r.body for r in llm_server.requests]
    assert [sorted(GRAMMAR_KEYS & set(b)) for b in bodies] == [["grammar"], ["structured_outputs"], ["ebnf"], []]
    assert bodies[0]["grammar"] == bodies[1]["structured_outputs"]["grammar"] == bodies[2]["ebnf"]


def test_constrain_types_with_a_server_is_a_clear_error(llm_server: ScriptedServer, photo: Path) -> None:
    code, err = ask(llm_server, photo, "--model", "tiny", "--grammar-format", "vllm", "--constrain", "types")
    assert code == 1
    assert "error: constrain='types' cannot be used with openai-chat:tiny@" in err
    assert "it follows grammar (types needs a local model: a server takes one grammar)" in err
    code, err = ask(llm_server, photo, "--model", "tiny", "--constrain", "grammar")
    assert code == 1 and "a server does when [llm] grammar_format says how it takes a grammar" in err
    assert llm_server.requests == []


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('constrain = "typs"', "[llm]: constrain (--constrain, [llm] constrain) must be one of none, grammar, types, "
         "got 'typs' (did you mean 'types'?)"),
        ("constrain = true", "constrain (--constrain, [llm] constrain) must be one of none, grammar, types, got True"),
        ('grammar_format = "llamacpp"', "[llm]: grammar_format (--grammar-format, [llm] grammar_format) must be one "
         "of none, vllm, llama.cpp, sglang, got 'llamacpp' (did you mean 'llama.cpp'?)"),
        ('grammar_fromat = "vllm"', "[llm] has no setting 'grammar_fromat' (did you mean 'grammar_format'?)"),
    ],
)  # fmt: skip
def test_a_bad_value_in_the_config_file_is_an_error_naming_the_setting_and_the_file(
    llm_server: ScriptedServer, photo: Path, tmp_path: Path, table: str, message: str
) -> None:
    config = tmp_path / "visprog.toml"
    config.write_text(f"[llm]\n{table}\n")
    code, err = ask(llm_server, photo, "--model", "tiny", "--config", config)
    assert code == 1
    assert f"error: config file {config}: " in err and message in err
    assert llm_server.requests == []


@pytest.mark.parametrize("flags", [["--constrain", "typed"], ["--grammar-format", "ollama"]])
def test_a_bad_flag_value_is_a_usage_error(
    llm_server: ScriptedServer, photo: Path, flags: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        ask(llm_server, photo, *flags)
    assert info.value.code == 2
    assert f"argument {flags[0]}: invalid choice: '{flags[1]}'" in capsys.readouterr().err


def test_a_grammar_format_with_a_local_model_is_an_error(photo: Path, model_folder: str) -> None:
    code, _, err = run(
        "ask", photo, "How many dogs?", "--plan-only", "--local", model_folder, "--grammar-format", "vllm"
    )
    assert code == 1 and "option(s) grammar_format do not apply to a local model" in err


# --- serve and eval: the planner they build ------------------------------------------------


def served_planner(monkeypatch: pytest.MonkeyPatch, *argv: Any) -> Planner:
    """The planner ``visprog serve`` with ``argv`` would give the web app (the server itself is not started)."""
    import visprog.apps.webapp

    seen: dict[str, Any] = {}
    monkeypatch.setattr(visprog.apps.webapp, "serve", lambda host, port, **kwargs: seen.update(kwargs))
    code, _, err = run("serve", *argv)
    assert code == 0, err
    planner: Planner = seen["planner_factory"]()
    return planner


def test_constrain_none_turns_a_local_models_constraint_off(
    monkeypatch: pytest.MonkeyPatch, model_folder: str, tmp_path: Path
) -> None:
    assert served_planner(monkeypatch, "--local", model_folder).constrain == "types"
    assert served_planner(monkeypatch, "--local", model_folder, "--constrain", "none").constrain == "none"
    assert served_planner(monkeypatch, "--local", model_folder, "--constrain", "grammar").constrain == "grammar"
    config = tmp_path / "visprog.toml"
    config.write_text(f'[llm]\nlocal = "{model_folder}"\nconstrain = "none"\n')
    assert served_planner(monkeypatch, "--config", config).constrain == "none"
    assert served_planner(monkeypatch, "--config", config, "--constrain", "types").constrain == "types"


def test_eval_builds_its_planners_and_its_ray_workers_with_the_setting(
    monkeypatch: pytest.MonkeyPatch, model_folder: str, tmp_path: Path
) -> None:
    import visprog.evaluation.runner

    PILImage.new("RGB", (8, 8)).save(tmp_path / "a.png")
    data = tmp_path / "data.jsonl"
    data.write_text(json.dumps({"id": "a", "image": "a.png", "question": "How many dogs?", "answer": "1"}) + "\n")
    seen: dict[str, Any] = {}

    def evaluate(items: Any, planner: Planner, interpreter: Any, **options: Any) -> None:
        seen.update(planner=planner, settings=options["settings"])

    monkeypatch.setattr(visprog.evaluation.runner, "evaluate", evaluate)
    argv = ["eval", data, "--task", "gqa", "-o", tmp_path / "out.jsonl", "--local", model_folder]
    code, _, err = run(*argv, "--constrain", "grammar", "--engine", "ray", "--workers", "1")
    assert code == 0, err
    assert seen["planner"].constrain == "grammar"
    assert seen["settings"].planner["constrain"] == "grammar"  # what each Ray worker builds its planner from
    worker_planner, _ = seen["settings"].build(device="cpu")
    assert worker_planner.constrain == "grammar"
    code, _, err = run(*argv)  # the default: a local model plans under types
    assert code == 0, err
    assert seen["planner"].constrain == "types" and seen["settings"] is None
