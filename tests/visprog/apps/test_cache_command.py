"""`visprog cache info|clear`, and what the plan cache key holds."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from tests import fakes
from visprog.apps.cli import main
from visprog.llm.local import TransformersClient
from visprog.llm.server import LLMConfig, OpenAIClient
from visprog.planner.cache import PlanCache


def _run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def test_cache_info_and_clear(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VISPROG_CACHE_DIR", str(tmp_path))
    code, out, _ = _run("cache", "info")
    assert code == 0 and out == f"{tmp_path / 'plans.sqlite'}: no plan cache yet (planning creates it)\n"
    cache = PlanCache()
    cache.put("a", "X=1")
    cache.put("b", "Y=2")
    code, out, _ = _run("cache", "info", "--json")
    info = json.loads(out)
    assert code == 0 and info["plans"] == 2 and info["path"] == str(tmp_path / "plans.sqlite")
    assert info["oldest"] <= info["newest"] and info["bytes"] > 0
    code, out, err = _run("cache", "info")
    assert out.startswith(f"{tmp_path / 'plans.sqlite'}: 2 plan(s), ")
    code, out, err = _run("cache", "clear")
    assert code == 0 and out == "" and err == f"cleared 2 plan(s) from {tmp_path / 'plans.sqlite'}\n"
    assert PlanCache().get("a") is None and PlanCache().info()["plans"] == 0


def test_the_generation_settings_are_part_of_a_plans_key() -> None:
    """Two clients of one model that would write different programs never share cached plans."""

    def key_parts(client: object) -> str:
        return str(getattr(client, "generation", ""))

    a = OpenAIClient(LLMConfig(model="m", base_url="http://127.0.0.1:9/v1", api_key="k", max_tokens=100))
    b = OpenAIClient(LLMConfig(model="m", base_url="http://127.0.0.1:9/v1", api_key="k", max_tokens=200))
    c = OpenAIClient(LLMConfig(model="m", base_url="http://127.0.0.1:9/v1", api_key="k", stop=["\n\n"]))
    assert len({a.identity, b.identity, c.identity}) == 1  # the same model on the same server
    assert len({key_parts(a), key_parts(b), key_parts(c)}) == 3
    local = [TransformersClient("x", max_new_tokens=n, temperature=t) for n, t in ((10, 0.0), (20, 0.0), (10, 0.5))]
    assert len({key_parts(x) for x in local}) == 3


class _Scripted:
    """A backend with an identity and generation settings that answers one program and counts its calls."""

    def __init__(self, generation: str) -> None:
        self.identity = "scripted:model"
        self.generation = generation
        self.calls = 0

    def complete(self, messages: object, *, n: int = 1, temperature: float | None = None) -> list[str]:
        self.calls += 1
        return ["BOX0=Loc(image=IMAGE, object='dog')\nANSWER0=Count(box=BOX0)\nFINAL_RESULT=Result(var=ANSWER0)"] * n


def test_a_plan_is_cached_per_generation_settings(tmp_path: Path) -> None:
    from visprog.planner.core import Planner

    cache = PlanCache(tmp_path / "plans.sqlite")
    short, long = _Scripted("max_tokens=100"), _Scripted("max_tokens=200")
    for backend in (short, long, short):
        plan = Planner(backend, registry=fakes.registry(), cache=cache).plan("gqa", "How many dogs?")
        assert plan.program.endswith("FINAL_RESULT=Result(var=ANSWER0)")
    assert (short.calls, long.calls) == (1, 1)  # the third plan came from the cache; the second did not
