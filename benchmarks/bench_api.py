"""The HTTP API under 16 concurrent clients sending GQA-style programs (Vqa + Eval) on a tiny BLIP.

Each client posts ``/v1/run`` requests one after another (a closed loop) over real HTTP on 127.0.0.1, from a
process of their own (so that they do not take the server's interpreter lock). With
cross-request batching (a 5 ms window, no cap) the Vqa steps of concurrent requests share model calls; the
baseline serves one request's step at a time (window 0, ``max_batch`` 1). Target: ≥ 3x requests/s. Also reports
the latency percentiles (p50, p90, p99) of both.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import io
import json
import multiprocessing
import shutil
import statistics
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import _common
from benchmarks.bench_throughput import program

CLIENTS = 16


def _images() -> list[str]:
    """The photos as base64 JPEG of 128 px (the processor resizes them anyway): small request bodies."""
    out = []
    for photo in _common.photos():
        photo = photo.copy()
        photo.thumbnail((128, 128))
        buffer = io.BytesIO()
        photo.save(buffer, "JPEG", quality=90)
        out.append(base64.b64encode(buffer.getvalue()).decode("ascii"))
    return out


def _load(url: str, per_client: int, images: list[str]) -> tuple[float, list[float], list[Any]]:
    """Every client's requests: (wall seconds, each request's latency, the answers in request order).

    The clients speak HTTP/1.1 with the standard library (one kept-alive connection each): a lighter client
    than httpx leaves more of the machine's cores to the server."""
    host, port = url.removeprefix("http://").split(":")
    start = threading.Barrier(CLIENTS)

    def client(c: int) -> list[tuple[float, Any]]:
        out = []
        connection = http.client.HTTPConnection(host, int(port), timeout=120)
        start.wait()
        for k in range(per_client):
            n = c * per_client + k
            body = {"program": program(n), "images": {"IMAGE": images[n % len(images)]}, "trace": False}
            t0 = time.perf_counter()
            connection.request("POST", "/v1/run", json.dumps(body), {"Content-Type": "application/json"})
            response = connection.getresponse()
            data = json.loads(response.read())
            out.append((time.perf_counter() - t0, data["result"] if response.status == 200 else data))
        connection.close()
        return out

    t0 = time.perf_counter()
    with ThreadPoolExecutor(CLIENTS) as pool:
        results = [pair for rows in pool.map(client, range(CLIENTS)) for pair in rows]
    return time.perf_counter() - t0, [s for s, _ in results], [a for _, a in results]


def _percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def measure(per_client: int, model_dir: str | None = None) -> list[_common.Row]:
    from tests.visprog.apps.api_server import serve_api
    from visprog.apps.api import create_app
    from visprog.apps.api_service import ApiSettings

    model_dir = model_dir or _common.tiny_blip_dir()
    images = _images()
    stats: dict[str, tuple[float, list[float], list[Any]]] = {}
    for name, window, max_batch in (("one at a time", 0.0, 1), ("batched", 0.005, None)):
        interpreter = _common.blip_interpreter(model_dir, max_batch)
        settings = ApiSettings(window=window, max_batch=max_batch, max_concurrent=CLIENTS, timeout=600)
        app = create_app(settings, registry=interpreter.registry, runtime=interpreter.runtime)
        with serve_api(app) as url, multiprocessing.get_context("spawn").Pool(1) as clients:
            clients.apply(_load, (url, 1, images))  # warm-up: the model loads
            stats[name] = clients.apply(_load, (url, per_client, images))
    single, batched = stats["one at a time"], stats["batched"]
    assert single[2] == batched[2], "batching changed the answers"
    n = CLIENTS * per_client
    rate = {name: n / s[0] for name, s in stats.items()}
    ratio = rate["batched"] / rate["one at a time"]
    rows: list[_common.Row] = []
    for name, (_, latencies, _) in stats.items():
        rows.append((f"{CLIENTS} clients, {n} requests, {name}, requests/s", f"{rate[name]:.1f}", "", ""))
        p50, p90, p99 = (_percentile(latencies, q) * 1e3 for q in (50, 90, 99))
        rows.append((f"{name}: latency p50 / p90 / p99, ms", f"{p50:.0f} / {p90:.0f} / {p99:.0f}", "", ""))
    rows.append(("speed-up batched vs. one at a time", f"{ratio:.2f}x", "≥ 3x", _common.met(ratio >= 3)))
    return rows


def main(argv: Sequence[str] | None = None, model_dir: str | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a tiny size, to check the script works")
    args = parser.parse_args(argv)
    own = model_dir is None
    model_dir = model_dir or _common.tiny_blip_dir()
    per_client = 1 if args.quick else 8
    rows = measure(per_client, model_dir)
    out = _common.table(rows, f"6. HTTP API, {CLIENTS} concurrent clients, GQA-style programs (tiny BLIP, CPU)")
    if own:
        shutil.rmtree(model_dir, ignore_errors=True)
    print(out)
    return out


if __name__ == "__main__":
    main()
