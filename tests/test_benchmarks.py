"""The benchmark scripts run (tiny sizes) and print the rows the README table expects. No timing assertions."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks import (
    _common,
    bench_api,
    bench_batching,
    bench_check,
    bench_overhead,
    bench_replies,
    bench_startup,
    bench_throughput,
)

pytest.importorskip("torch")
pytest.importorskip("transformers")


@pytest.fixture(scope="module", autouse=True)
def _restore_threads() -> Iterator[None]:
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    folder = tmp_path_factory.mktemp("bench-blip")
    from tests.modules.test_vqa import build_blip

    build_blip(Path(folder))
    return str(folder)


def rows(text: str) -> list[list[str]]:
    """The table's data rows, split into cells."""
    lines = [
        line for line in text.splitlines() if line.startswith("| ") and not line.startswith(("| measurement", "| ---"))
    ]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]


def test_overhead(capsys: pytest.CaptureFixture[str]) -> None:
    out = bench_overhead.main(["--quick"])
    assert out in capsys.readouterr().out
    table = rows(out)
    assert [r[0] for r in table][:2] == ["steps in the chain program", "direct call of the no-op, µs/call"]
    assert table[0][1] == "20"
    assert any(r[0].startswith("interpreter overhead, µs/step") and r[2] == "< 50" for r in table)
    assert table[-1][0].startswith("overhead relative to a") and table[-1][1].endswith("%")


def test_batching(model_dir: str) -> None:
    table = rows(bench_batching.main(["--quick"], model_dir=model_dir))
    assert len(table) == 3
    assert table[-1][0] == "speed-up batched vs. sequential" and table[-1][1].endswith("x") and table[-1][2] == "≥ 2x"
    assert float(table[0][1]) > 0 and float(table[1][1]) > 0


def test_throughput(model_dir: str) -> None:
    table = rows(bench_throughput.main(["--quick"], model_dir=model_dir))
    assert [r[0] for r in table] == [
        "8 programs, max_batch 1, programs/s",
        "8 programs, max_batch 4, programs/s",
        "8 programs, max_batch 16, programs/s",
        "speed-up max_batch 4 vs. 1",
        "speed-up max_batch 16 vs. 1",
    ]
    assert table[-1][2] == "≥ 3x" and table[-1][3] in {"yes", "no"}


def test_api(model_dir: str) -> None:
    table = rows(bench_api.main(["--quick"], model_dir=model_dir))
    assert [r[0] for r in table] == [
        "16 clients, 16 requests, one at a time, requests/s",
        "one at a time: latency p50 / p90 / p99, ms",
        "16 clients, 16 requests, batched, requests/s",
        "batched: latency p50 / p90 / p99, ms",
        "speed-up batched vs. one at a time",
    ]
    assert float(table[0][1]) > 0 and len(table[1][1].split(" / ")) == 3
    assert table[-1][1].endswith("x") and table[-1][2] == "≥ 3x" and table[-1][3] in {"yes", "no"}


def test_startup() -> None:
    table = rows(bench_startup.main(["--quick"]))
    assert table[0][0].startswith("`visprog check FILE` wall time")
    assert table[1] == ["torch / transformers imported by `visprog check`", "neither", "neither", "yes"]


def test_replies() -> None:
    table = rows(bench_replies.main(["--quick"]))
    assert [r[0] for r in table[:3]] == [
        "replies in the corpus",
        "checking without a repair round, before (fixed reference, 100 replies)",
        "checking without a repair round, now",
    ]
    assert int(table[0][1]) >= 80 and table[0][3] == "yes"
    assert table[1][1] == "31%"
    assert table[2][2] == "> before" and table[2][3] == "yes"
    assert table[-1][0] == "extraction + parsing vs. parsing alone" and table[-1][1].endswith("x")
    assert table[-1][2] == "≤ 1.5x"


def test_table_format() -> None:
    text = _common.table([("a", "1", "", "")], "title")
    assert text.splitlines() == [
        "### title",
        "",
        "| measurement | value | target | met |",
        "| --- | --- | --- | --- |",
        "| a | 1 |  |  |",
    ]


def test_check() -> None:
    table = rows(bench_check.main(["--quick"]))
    assert [r[0] for r in table] == [
        "checking 100 steps (a valid program), ms",
        "checking 1,000 steps (a valid program), ms",
        "1,000 vs. 100 steps (a valid program)",
        "checking 100 steps (an undefined variable every 10 steps), ms",
        "checking 1,000 steps (an undefined variable every 10 steps), ms",
        "1,000 vs. 100 steps (an undefined variable every 10 steps)",
    ]
    assert table[2][1].endswith("x") and table[2][2] == "≤ 15x"
