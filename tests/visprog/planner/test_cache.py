"""The on-disk plan cache."""

from __future__ import annotations

import threading
import warnings
from pathlib import Path

import pytest

from visprog.planner.cache import PlanCache, default_cache_path

PROGRAM = "BOX0=Loc(image=IMAGE, object='cat')\nFINAL_RESULT=Result(var=BOX0)"


def test_put_then_get(tmp_path: Path) -> None:
    cache = PlanCache(tmp_path / "plans.sqlite")
    key = PlanCache.key("gqa", "openai-chat:tiny@http://x/v1", "How many cats?")
    assert cache.get(key) is None
    cache.put(key, PROGRAM)
    assert cache.get(key) == PROGRAM
    cache.put(key, "FINAL_RESULT=Result(var=IMAGE)")
    assert cache.get(key) == "FINAL_RESULT=Result(var=IMAGE)"


def test_the_file_is_created_on_first_use(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "folder" / "plans.sqlite"
    cache = PlanCache(path)
    assert not path.exists()
    assert cache.get("k") is None
    assert path.is_file()


def test_plans_persist_across_instances(tmp_path: Path) -> None:
    path = tmp_path / "plans.sqlite"
    PlanCache(path).put("k", PROGRAM)
    assert PlanCache(str(path)).get("k") == PROGRAM


def test_keys_are_stable_and_sensitive_to_every_part() -> None:
    key = PlanCache.key("gqa", "model", "How many cats?")
    assert key == PlanCache.key("gqa", "model", "How many cats?")
    assert len(key) == 64 and int(key, 16) >= 0
    others = {
        PlanCache.key("nlvr", "model", "How many cats?"),
        PlanCache.key("gqa", "other model", "How many cats?"),
        PlanCache.key("gqa", "model", "How many dogs?"),
        PlanCache.key("gqa", "model"),
        PlanCache.key("gqa", "model", "How many cats?", ""),
        PlanCache.key("gqam", "odel", "How many cats?"),  # the same characters, split differently
        PlanCache.key(),
    }
    assert key not in others and len(others) == 7


def test_the_cache_folder_comes_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VISPROG_CACHE_DIR", str(tmp_path / "mine"))
    assert default_cache_path() == tmp_path / "mine" / "plans.sqlite"
    cache = PlanCache()
    assert cache.path == tmp_path / "mine" / "plans.sqlite"
    cache.put("k", PROGRAM)
    assert (tmp_path / "mine" / "plans.sqlite").is_file()
    monkeypatch.delenv("VISPROG_CACHE_DIR")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_path() == tmp_path / "home" / ".cache" / "visprog" / "plans.sqlite"


def test_clear(tmp_path: Path) -> None:
    cache = PlanCache(tmp_path / "plans.sqlite")
    cache.put("a", PROGRAM)
    cache.put("b", PROGRAM)
    cache.clear()
    assert cache.get("a") is None and cache.get("b") is None
    cache.put("a", PROGRAM)
    assert cache.get("a") == PROGRAM


def test_two_threads_share_a_cache(tmp_path: Path) -> None:
    cache = PlanCache(tmp_path / "plans.sqlite")
    other = PlanCache(tmp_path / "plans.sqlite")  # a second instance on the same file, as another process would
    errors: list[BaseException] = []

    def work(name: str, target: PlanCache) -> None:
        try:
            for i in range(50):
                target.put(f"{name}-{i}", f"{name} {i}")
                assert target.get(f"{name}-{i}") == f"{name} {i}"
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=work, args=(n, c)) for n, c in (("a", cache), ("b", cache), ("c", other))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not any(t.is_alive() for t in threads) and errors == []
    assert cache.get("b-49") == "b 49" and other.get("a-0") == "a 0"


def test_an_unusable_cache_warns_once_and_acts_empty(tmp_path: Path) -> None:
    path = tmp_path / "plans.sqlite"
    path.write_text("this is not a database, it is a text file that happens to be long enough" * 20)
    cache = PlanCache(path)
    with pytest.warns(RuntimeWarning, match="plan cache .* cannot be used"):
        assert cache.get("k") is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning, no error
        cache.put("k", PROGRAM)
        cache.clear()
        assert cache.get("k") is None
