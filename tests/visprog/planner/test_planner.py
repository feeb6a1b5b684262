"""The planner end to end: the real openai client, a scripted server on 127.0.0.1, the real checker."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image as PILImage
from skimage import data

from tests import fakes
from tests.llm_server import Reply, ScriptedServer
from visprog.apps.cli import main
from visprog.errors import ServiceError
from visprog.language.signatures import module
from visprog.language.values import Image
from visprog.llm import client_from_options
from visprog.planner.cache import PlanCache
from visprog.planner.core import Planner, PlanningError, vote
from visprog.running.runtime import Runtime
from visprog.solving import solve

GOOD = "BOX0=Loc(image=IMAGE, object='dog')\nANSWER0=Count(box=BOX0)\nFINAL_RESULT=Result(var=ANSWER0)"
UNKNOWN_MODULE = GOOD.replace("=Loc(", "=Locate_Things(")


def planner_for(server: ScriptedServer, **options: Any) -> Planner:
    backend = client_from_options(base_url=server.url, model="tiny-planner", max_retries=0, timeout=5)
    return Planner(backend, registry=fakes.registry(), cache=options.pop("cache", False), **options)


@pytest.fixture
def images() -> dict[str, Image]:
    return {"IMAGE": PILImage.fromarray(data.astronaut())}


#: FaceDet's cascade backend ships with scikit-image: no download.
RUNTIME = Runtime(modules={"FaceDet": {"backend": "cascade"}})


def test_a_fenced_program_with_chatter_is_extracted_and_checked(llm_server: ScriptedServer) -> None:
    llm_server.script([f"Sure! Here is the program:\n```python\n{GOOD}\n```\nIt counts the dogs."])
    plan = planner_for(llm_server).plan("gqa", "How many dogs are there?")
    assert plan.program == GOOD
    assert [s.step.target for s in plan.checked.steps] == ["BOX0", "ANSWER0", "FINAL_RESULT"]
    request = llm_server.requests[0].body
    assert request["model"] == "tiny-planner"
    assert request["messages"][-1]["content"].endswith("How many dogs are there?")
    # the module reference the LLM saw is the registry's, fakes included
    assert "Loc(image: Image, object: str) -> Objects" in request["messages"][0]["content"]


def test_an_invalid_program_is_repaired_with_the_diagnostics(llm_server: ScriptedServer) -> None:
    llm_server.script([UNKNOWN_MODULE, f"```\n{GOOD}\n```"])
    plan = planner_for(llm_server).plan("gqa", "How many dogs are there?")
    assert plan.program == GOOD
    assert len(plan.attempts) == 2 and plan.attempts[0].error is not None
    second = llm_server.requests[1].body["messages"]
    assert second[-2] == {"role": "assistant", "content": UNKNOWN_MODULE}
    feedback = second[-1]["content"]
    assert "line 1, col 6: unknown module 'Locate_Things'" in feedback
    assert "BOX0=Locate_Things(image=IMAGE, object='dog')\n       ^" in feedback


def test_garbage_every_time_ends_in_an_error_listing_every_attempt(llm_server: ScriptedServer) -> None:
    llm_server.script(["I cannot help with that.", "BOX0=Loc(image=IMAGE", "Count(box=BOX0)"])
    with pytest.raises(PlanningError) as info:
        planner_for(llm_server, repair_rounds=2).plan("gqa", "How many dogs are there?")
    message = str(info.value)
    assert len(info.value.attempts) == 3 and len(llm_server.requests) == 3
    assert "after 3 attempt(s)" in message
    assert "--- attempt 1 ---" in message and "no program found in the reply" in message
    assert "--- attempt 2 ---" in message and "missing ')' at the end of the step" in message
    assert "--- attempt 3 ---" in message


def test_a_slow_answer_honours_the_timeout(llm_server: ScriptedServer) -> None:
    llm_server.script([Reply.slow(3, GOOD)])
    backend = client_from_options(base_url=llm_server.url, model="tiny-planner", max_retries=0, timeout=0.5)
    start = time.monotonic()
    with pytest.raises(ServiceError) as info:
        Planner(backend, registry=fakes.registry(), cache=False).plan("gqa", "How many dogs?")
    assert time.monotonic() - start < 2.5
    assert llm_server.url.split("/v1")[0] in str(info.value)


def test_a_rate_limit_is_retried_with_backoff(llm_server: ScriptedServer) -> None:
    llm_server.script([Reply.rate_limited(), GOOD])
    backend = client_from_options(base_url=llm_server.url, model="tiny-planner", max_retries=2, timeout=5)
    plan = Planner(backend, registry=fakes.registry(), cache=False).plan("gqa", "How many dogs?")
    assert plan.program == GOOD and len(llm_server.requests) == 2


def test_the_plan_cache_returns_the_stored_program(llm_server: ScriptedServer, tmp_path: Path) -> None:
    cache = PlanCache(tmp_path / "plans.sqlite")
    llm_server.script([GOOD])
    first = planner_for(llm_server, cache=cache).plan("gqa", "How many dogs?")
    again = planner_for(llm_server, cache=cache).plan("gqa", "How many dogs?")
    assert not first.cached and again.cached and again.program == GOOD
    assert len(llm_server.requests) == 1
    # another question is another entry; no cache means the server is asked
    llm_server.script([GOOD, GOOD])
    planner_for(llm_server, cache=cache).plan("gqa", "How many cats?")
    planner_for(llm_server, cache=False).plan("gqa", "How many dogs?")
    assert len(llm_server.requests) == 3


def test_voting_takes_the_majority_and_reports_agreement(llm_server: ScriptedServer, images: dict[str, Image]) -> None:
    program = "ANSWER0=Vqa(image=IMAGE, question='{q}')\nFINAL_RESULT=Result(var=ANSWER0)"
    fakes.reset()
    fakes.VQA_ANSWERS.update({"a": "blue", "b": "red", "c": "Blue"})
    llm_server.script([program.format(q="a"), program.format(q="b"), program.format(q="c"), "not a program"] * 1)
    planner = planner_for(llm_server, repair_rounds=0)
    solution = solve("gqa", "What colour is it?", images, planner=planner, runtime=RUNTIME, samples=4)
    assert solution.result == "blue"
    assert solution.agreement == pytest.approx(2 / 3)
    assert len(solution.samples) == 4 and isinstance(solution.samples[3][0], PlanningError)
    # every sample asked with its own temperature > 0
    assert all(r.body.get("temperature", 0) > 0 for r in llm_server.requests)
    fakes.reset()


def test_vote_ties_go_to_the_first_answer() -> None:
    assert vote(["yes", "no"]) == ("yes", 0.5)
    assert vote([True, False, False]) == (False, pytest.approx(2 / 3))
    with pytest.raises(ValueError):
        vote([])


def test_execution_errors_can_be_fed_back(llm_server: ScriptedServer, images: dict[str, Image]) -> None:
    # the name in a variable: the checker refuses an unknown literal emoji name before anything runs
    failing = (
        "NAME='no_such_emoji_name'\nIMAGE0=Emoji(image=IMAGE, object=[], emoji=NAME)\nFINAL_RESULT=Result(var=IMAGE0)"
    )
    fixed = "IMAGE0=Emoji(image=IMAGE, object=[], emoji='grinning_face')\nFINAL_RESULT=Result(var=IMAGE0)"
    llm_server.script([failing, fixed])
    planner = planner_for(llm_server)
    solution = solve("edit", "Hide nothing", images, planner=planner, runtime=RUNTIME, feed_errors=True)
    assert solution.program == fixed
    feedback = llm_server.requests[1].body["messages"][-1]["content"]
    assert "failed while running" in feedback and "unknown emoji 'no_such_emoji_name'" in feedback


def test_a_plugin_module_reaches_the_planner_without_prompt_edits(llm_server: ScriptedServer) -> None:
    @module
    def Invert(image: Image) -> Image:
        """Invert the colours of an image.

        Args:
            image: the image to invert.
        """
        return PILImage.fromarray(255 - np.asarray(image))

    registry = fakes.registry()
    registry.register(Invert)
    llm_server.script(["IMAGE0=Invert(image=IMAGE)\nFINAL_RESULT=Result(var=IMAGE0)"])
    backend = client_from_options(base_url=llm_server.url, model="tiny-planner", max_retries=0, timeout=5)
    plan = Planner(backend, registry=registry, cache=False).plan("edit", "Invert the colours")
    assert plan.checked.steps[0].spec is Invert
    assert "Invert(image: Image) -> Image" in llm_server.requests[0].body["messages"][0]["content"]


def test_cli_ask_prints_the_program_and_the_result(
    llm_server: ScriptedServer, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    photo = tmp_path / "astronaut.png"
    PILImage.fromarray(data.astronaut()).save(photo)
    face_count = (
        "OBJ0=FaceDet(image=IMAGE)\nANSWER0=Count(box=OBJ0)\n"
        "ANSWER1=Eval(expr=\"'yes' if {ANSWER0} > 0 else 'no'\")\nFINAL_RESULT=Result(var=ANSWER1)"
    )
    llm_server.script([f"```\n{face_count}\n```", face_count])
    monkeypatch.setenv("OPENAI_BASE_URL", llm_server.url)
    monkeypatch.setenv("VISPROG_LLM_MODEL", "tiny-planner")
    import io

    out, err = io.StringIO(), io.StringIO()
    code = main(["ask", str(photo), "Is there a face?", "--backend", "FaceDet=cascade", "--no-cache"], out, err)
    assert code == 0, err.getvalue()
    assert out.getvalue() == "result: yes\n"  # the answer alone on stdout
    assert err.getvalue().startswith("program:\n" + face_count)  # the program and the trace on stderr
    out = io.StringIO()
    assert main(["ask", str(photo), "Is there a face?", "--plan-only", "--no-cache"], out, err) == 0
    assert out.getvalue().strip() == face_count
    assert llm_server.requests[0].body["model"] == "tiny-planner"


def test_a_local_model_plans_through_the_same_loop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A tiny random causal LM: its text is random, so this checks the plumbing, not the plans."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    words = ["BOX0", "=", "Loc(image=IMAGE,", "object='dog')", "FINAL_RESULT=Result(var=BOX0)", "hello", "\n"]
    vocab = ["[UNK]", "[PAD]", "[EOS]", *words]
    core = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(vocab)}, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]", pad_token="[PAD]", eos_token="[EOS]")
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(vocab), n_positions=8192, n_embd=16, n_layer=1, n_head=2)
    GPT2LMHeadModel(config).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)

    backend = client_from_options(local=str(tmp_path), max_new_tokens=8)
    planner = Planner(backend, registry=fakes.registry(), repair_rounds=1, cache=False, constrain="none")
    prompts: list[str] = []
    build = backend._prompt  # type: ignore[attr-defined]

    def spy(tokenizer: Any, messages: list[dict[str, str]]) -> Any:
        text, templated = build(tokenizer, messages)
        prompts.append(text)
        return text, templated

    monkeypatch.setattr(backend, "_prompt", spy)
    with pytest.raises(PlanningError) as info:
        planner.plan("gqa", "How many dogs are there?")
    # two rounds: the first prompt, then the same conversation with the diagnostics appended
    assert len(prompts) == 2 and len(info.value.attempts) == 2
    assert "Loc(image=IMAGE," in prompts[0]  # the module reference and examples reached the model
    assert len(prompts[1]) > len(prompts[0])
    assert "after 2 attempt(s)" in str(info.value)


def test_python_api_verify_plans_runs_and_returns_a_boolean(llm_server: ScriptedServer) -> None:
    import visprog

    program = (
        "ANSWER0=Vqa(image=LEFT, question='Is there a face?')\n"
        "ANSWER1=Vqa(image=RIGHT, question='Is there a face?')\n"
        "ANSWER2=Eval(expr='{ANSWER0} xor {ANSWER1}')\nFINAL_ANSWER=Result(var=ANSWER2)"
    )
    llm_server.script([program])
    fakes.reset()
    fakes.VQA_ANSWERS["Is there a face?"] = "yes"
    planner = planner_for(llm_server)
    solution = visprog.verify(data.astronaut(), data.chelsea(), "One image shows a face.", planner=planner)
    assert solution.result is False  # 'yes' xor 'yes'
    assert solution.program == program and solution.agreement == 1.0
    assert [r.target for r in solution.trace.records][:2] == ["ANSWER0", "ANSWER1"]
    fakes.reset()


def test_the_config_file_holds_the_llm_settings(
    llm_server: ScriptedServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import io

    config = tmp_path / "visprog.toml"
    config.write_text(f'[llm]\nmodel = "from-config"\nbase_url = "{llm_server.url}"\ntemperature = 0.25\n')
    photo = tmp_path / "astronaut.png"
    PILImage.fromarray(data.astronaut()).save(photo)
    llm_server.script([GOOD, GOOD])
    out, err = io.StringIO(), io.StringIO()
    argv = ["ask", str(photo), "How many dogs?", "--plan-only", "--no-cache", "--config", str(config)]
    assert main(argv, out, err) == 0
    body = llm_server.requests[0].body
    assert body["model"] == "from-config" and body["temperature"] == 0.25
    # the command line wins over the file
    assert main([*argv, "--model", "from-cli", "--stop", "END"], out, err) == 0
    assert llm_server.requests[1].body["model"] == "from-cli"
    assert llm_server.requests[1].body["stop"] == ["END"]
