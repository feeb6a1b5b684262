"""The one path from text to answer (visprog.solving.solve): plan, repair, sample, run, vote, with its events."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import pytest
from PIL import Image as PILImage
from skimage import data

from tests import fakes
from tests.llm_server import ScriptedServer, _clean_llm_env, llm_server
from visprog.errors import StepError, VisprogError
from visprog.language.signatures import module
from visprog.language.values import Image, answer_key, normalize_answer, same_answer
from visprog.llm import client_from_options
from visprog.planner.cache import PlanCache
from visprog.planner.core import Planner, PlanningError, vote
from visprog.planner.events import CacheHit, PlanFailed, Planned, RepairRound, ReplyReceived, RequestSent, Voted
from visprog.running.events import Event, RunFinished, RunStarted, StepFinished, StepStarted, stream
from visprog.running.runtime import Runtime
from visprog.solving import solve, solve_by_verb, vote_runs

COUNT = "BOX0=Loc(image=IMAGE, object='dog')\nANSWER0=Count(box=BOX0)\nFINAL_RESULT=Result(var=ANSWER0)"
UNKNOWN = COUNT.replace("=Loc(", "=Lco(")
ASK = "ANSWER0=Vqa(image=IMAGE, question='{q}')\nFINAL_RESULT=Result(var=ANSWER0)"
RUNTIME = Runtime(modules={"FaceDet": {"backend": "cascade"}})

__all__ = ["_clean_llm_env", "llm_server"]  # the scripted LLM server's fixtures


def planner_for(server: ScriptedServer, **options: Any) -> Planner:
    backend = client_from_options(base_url=server.url, model="tiny-planner", max_retries=0, timeout=5)
    return Planner(backend, registry=fakes.registry(), cache=options.pop("cache", False), **options)


@pytest.fixture
def images() -> dict[str, Any]:
    return {"IMAGE": PILImage.fromarray(data.astronaut())}


@pytest.fixture(autouse=True)
def _fresh_fakes() -> Any:
    fakes.reset()
    yield
    fakes.reset()


def kinds(events: list[Event]) -> list[str]:
    return [e.kind for e in events]


def test_events_come_in_order_from_the_first_request_to_the_vote(
    llm_server: ScriptedServer, images: dict[str, Any]
) -> None:
    llm_server.script([UNKNOWN, COUNT])
    events: list[Event] = []
    solution = solve("gqa", "How many dogs?", images, planner=planner_for(llm_server), on_event=events.append)
    assert solution.program == COUNT
    assert kinds(events) == [
        "request_sent",
        "reply_received",
        "repair_round",
        "request_sent",
        "reply_received",
        "planned",
        "run_started",
        *["step_started", "step_finished"] * 3,
        "run_finished",
        "voted",
    ]
    first, reply, repair, second = events[:4]
    assert isinstance(first, RequestSent) and (first.task, first.sample, first.attempt) == ("gqa", 0, 1)
    assert isinstance(reply, ReplyReceived) and reply.program == UNKNOWN and reply.seconds >= 0
    assert isinstance(repair, RepairRound) and "unknown module 'Lco'" in repair.diagnostics
    assert isinstance(second, RequestSent) and second.attempt == 2 and second.messages == first.messages + 2
    planned = events[5]
    assert isinstance(planned, Planned) and (planned.program, planned.attempts) == (COUNT, 2)
    assert isinstance(events[6], RunStarted) and events[6].steps == 3
    steps = [e for e in events if isinstance(e, StepFinished)]
    assert [e.target for e in steps] == ["BOX0", "ANSWER0", "FINAL_RESULT"]
    assert isinstance(events[-2], RunFinished) and events[-2].ok
    voted = events[-1]
    assert isinstance(voted, Voted) and (voted.answers, voted.winner, voted.agreement) == (("1",), "1", 1.0)
    assert all(isinstance(e.to_dict()["kind"], str) for e in events)


def test_samples_plan_first_then_run_together_and_vote(llm_server: ScriptedServer, images: dict[str, Any]) -> None:
    fakes.VQA_ANSWERS.update({"a": "yes", "b": "no", "c": "Yes."})
    llm_server.script([ASK.format(q="a"), ASK.format(q="b"), "no program here", ASK.format(q="c")])
    events: list[Event] = []
    planner = planner_for(llm_server, repair_rounds=0)
    solution = solve("gqa", "Is it?", images, planner=planner, samples=4, on_event=events.append)
    assert solution.result == "yes" and solution.agreement == pytest.approx(2 / 3)
    assert isinstance(solution.samples[2][0], PlanningError) and solution.samples[2][1] is None
    planning = [e for e in events if isinstance(e, (Planned, PlanFailed))]
    assert [(type(e), e.sample) for e in planning] == [(Planned, 0), (Planned, 1), (PlanFailed, 2), (Planned, 3)]
    assert "after 1 attempt(s)" in next(e for e in planning if isinstance(e, PlanFailed)).error
    # every run starts after the last plan; the runs are jobs of one batch
    last_plan = max(i for i, e in enumerate(events) if isinstance(e, (Planned, PlanFailed)))
    assert min(i for i, e in enumerate(events) if isinstance(e, RunStarted)) > last_plan
    assert sorted(e.job for e in events if isinstance(e, RunStarted)) == [0, 1, 2]
    voted = events[-1]
    assert isinstance(voted, Voted)
    assert (voted.answers, voted.winner, voted.samples) == (("yes", "no", "Yes."), "yes", 4)


def test_a_cache_hit_is_an_event_and_no_request(
    llm_server: ScriptedServer, images: dict[str, Any], tmp_path: Path
) -> None:
    cache = PlanCache(tmp_path / "plans.sqlite")
    llm_server.script([COUNT])
    planner_for(llm_server, cache=cache).plan("gqa", "How many dogs?")
    events: list[Event] = []
    solve("gqa", "How many dogs?", images, planner=planner_for(llm_server, cache=cache), on_event=events.append)
    assert kinds(events)[:2] == ["cache_hit", "planned"]
    assert isinstance(events[0], CacheHit) and events[0].program == COUNT
    assert not any(isinstance(e, RequestSent) for e in events)
    assert len(llm_server.requests) == 1


def test_the_events_as_an_iterator(llm_server: ScriptedServer, images: dict[str, Any]) -> None:
    llm_server.script([COUNT])
    planner = planner_for(llm_server)
    events = stream(lambda on_event: solve("gqa", "How many?", images, planner=planner, on_event=on_event))
    seen = [e.kind for e in events]
    assert seen[0] == "request_sent" and seen[-1] == "voted"
    assert "step_started" in seen and events.result.result == 1


def test_when_no_program_runs_the_last_error_is_raised(llm_server: ScriptedServer, images: dict[str, Any]) -> None:
    # the name in a variable: the checker refuses an unknown literal emoji name before anything runs
    failing = (
        "NAME='no_such_emoji_name'\nIMAGE0=Emoji(image=IMAGE, object=[], emoji=NAME)\nFINAL_RESULT=Result(var=IMAGE0)"
    )
    llm_server.script([failing])
    events: list[Event] = []
    with pytest.raises(StepError) as info:
        solve("edit", "Hide", images, planner=planner_for(llm_server), runtime=RUNTIME, on_event=events.append)
    assert info.value.trace is not None
    assert isinstance(events[-1], RunFinished) and not events[-1].ok
    assert not any(isinstance(e, Voted) for e in events)
    llm_server.script(["nothing", "nothing"])
    with pytest.raises(PlanningError):
        solve("gqa", "How many?", images, planner=planner_for(llm_server, repair_rounds=1))


def test_a_task_missing_an_image_is_refused_before_planning(llm_server: ScriptedServer) -> None:
    with pytest.raises(VisprogError, match="task nlvr reads LEFT, RIGHT: no image was given for RIGHT"):
        solve("nlvr", "Both show a dog.", {"LEFT": data.astronaut()}, planner=planner_for(llm_server))
    assert llm_server.requests == []


def test_step_events_reach_a_listener_of_the_run(llm_server: ScriptedServer, images: dict[str, Any]) -> None:
    llm_server.script([COUNT])
    started: list[str] = []

    def listen(event: Event) -> None:
        if isinstance(event, StepStarted):
            started.append(event.module)

    solve("gqa", "How many?", images, planner=planner_for(llm_server), on_event=listen)
    assert started == ["Loc", "Count", "Result"]


# --------------------------------------------------------------------------- one rule for equal answers


@pytest.mark.parametrize(
    ("a", "b"),
    [("yes", True), ("No.", False), ("2", 2), ("2.0", 2), ("two", 2), ("The Dog", "dog"), ("1,000", 1000.0)],
)
def test_voting_and_scoring_agree_on_equal_answers(a: Any, b: Any) -> None:
    assert same_answer(a, b) and answer_key(a) == answer_key(b)
    assert normalize_answer(a) == normalize_answer(b)
    assert vote([a, b, "something else"]) == (a, pytest.approx(2 / 3))


def test_images_and_objects_are_only_the_same_answer_as_themselves() -> None:
    one, other = PILImage.new("RGB", (2, 2)), PILImage.new("RGB", (2, 2))
    assert same_answer(one, one) and not same_answer(one, other)
    assert vote([one, other, other]) == (other, pytest.approx(2 / 3))


def test_vote_runs_picks_the_first_run_of_the_majority_answer() -> None:
    from visprog.running.tracing import Trace

    runs = [Trace("FINAL_RESULT=Result(var=X)", result=answer) for answer in ("no", True, "yes")]
    events: list[Event] = []
    winner, agreement = vote_runs(runs, samples=5, on_event=events.append)
    assert winner is runs[1] and agreement == pytest.approx(2 / 3)
    assert events == [Voted(("no", "True", "yes"), "True", pytest.approx(2 / 3), 5)]
    with pytest.raises(ValueError):
        vote_runs([])


def test_ask_and_verify_use_the_tasks_with_those_verbs_and_their_inputs(
    llm_server: ScriptedServer, images: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The convenience functions read the task files: a file that redefines 'ask' with another input is used."""
    import visprog

    (tmp_path / "mine.toml").write_text(
        'task = "mine"\nverb = "ask"\ninputs = ["PHOTO"]\ninput_label = "Q"\ninstructions = "x"\n'
        '[[examples]]\ninput = "x"\nprogram = "A=Vqa(image=PHOTO, question=\'q\')\\nR=Result(var=A)"\n',
        encoding="utf-8",
    )
    monkeypatch.setenv("VISPROG_TASKS", str(tmp_path))
    (tmp_path / "gqa.toml").write_text(
        (resources.files("visprog.prompts") / "gqa.toml")
        .read_text(encoding="utf-8")
        .replace('verb = "ask"', 'verb = "question"'),
        encoding="utf-8",
    )
    program = ASK.format(q="What is it?").replace("IMAGE", "PHOTO")
    llm_server.script([program])
    solution = visprog.ask(images["IMAGE"], "What is it?", planner=planner_for(llm_server), runtime=RUNTIME)
    assert solution.program == program
    assert llm_server.requests[0].body["messages"][-1]["content"] == "Q: What is it?"
    with pytest.raises(VisprogError, match=r"task nlvr \('verify'\) reads 2 image"):
        solve_by_verb("verify", [images["IMAGE"]], "only one", planner=planner_for(llm_server))
    with pytest.raises(VisprogError, match="no task has the verb 'paint'"):
        solve_by_verb("paint", [images["IMAGE"]], "x")


def test_a_sample_whose_second_plan_fails_keeps_the_other_samples_answer(
    llm_server: ScriptedServer, images: dict[str, Any]
) -> None:
    """--feed-errors: the new plan is drawn at the samples' temperature, and an LLM error there loses nothing."""
    from tests.llm_server import Reply
    from visprog.errors import ServiceError

    failing = COUNT.replace(
        "FINAL_RESULT=Result(var=ANSWER0)", "ANSWER1=Eval(expr='{ANSWER0} / 0')\nFINAL_RESULT=Result(var=ANSWER1)"
    )
    llm_server.script([COUNT, failing, Reply.server_error()])
    solution = solve(
        "gqa", "How many dogs?", images, planner=planner_for(llm_server), samples=2, feed_errors=True, runtime=RUNTIME
    )
    assert solution.program == COUNT and solution.result == 1
    assert isinstance(solution.samples[1][1], ServiceError)
    assert [r.body.get("temperature") for r in llm_server.requests] == [0.7, 0.7, 0.7]


def test_the_program_that_runs_and_is_shown_is_the_canonical_one(
    llm_server: ScriptedServer, images: dict[str, Any]
) -> None:
    """Positional arguments, aliases and double quotes as a model wrote them; the canonical program runs."""
    written = 'BOX0=LOC(IMAGE, "dog")\nANSWER0=COUNT(BOX0)\nFINAL_RESULT=RESULT(ANSWER0)'
    llm_server.script([written])
    solution = solve("gqa", "How many dogs?", images, planner=planner_for(llm_server), runtime=RUNTIME)
    assert solution.program == COUNT
    assert solution.trace.source.rstrip("\n") == COUNT
    assert solution.plan.attempts[-1].reply == written  # the reply as written stays with the plan
    assert solution.result == 1



@module
def Broken(image: Image) -> int:
    """Raises, as a plugin's own code may.

    Args:
        image: any image.

    Returns:
        Never.
    """
    raise ValueError("no frames in this picture")


def test_errors_fed_back_to_the_llm_keep_the_message_not_this_machines_paths(
    llm_server: ScriptedServer, images: dict[str, Any]
) -> None:
    """--feed-errors: the step's error reaches the LLM; the file and line where the module raised do not."""
    registry = fakes.registry().copy()
    registry.register(Broken)
    backend = client_from_options(base_url=llm_server.url, model="scripted", max_retries=0)
    planner = Planner(backend, registry=registry, cache=False)
    llm_server.script(["ANSWER0=Broken(image=IMAGE)\nFINAL_RESULT=Result(var=ANSWER0)", COUNT])
    solution = solve("gqa", "How many dogs?", images, planner=planner, feed_errors=True, runtime=RUNTIME)
    assert solution.program == COUNT and solution.result == 1
    sent = str(llm_server.requests[-1].body)
    assert "line 1, Broken: ValueError: no frames in this picture" in sent
    assert __file__ not in sent and " (at " not in sent
