"""``visprog api --engine ray``: the API on Ray Serve answers as the local server does, from replicas that batch.

Local Ray with two CPU replicas, started once for the module (:func:`ray_api`) by :func:`serve_on_ray`, the
function the command runs; the local server is built from the same :class:`ReplicaSettings`. The replicas'
modules: the offline built-ins (FaceDet's cascade) and ``tests.fakes`` from :func:`registry`, plus a plugin
file sent to the replicas. Its ``Whoami`` module answers with its process and the size of the batched
call it was in, which shows where a request ran and with how many others.
"""

from __future__ import annotations

import base64
import concurrent.futures
import importlib
import io
import re
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image as PILImage

from tests import fakes
from tests.llm_server import ScriptedServer, serve_scripted
from tests.visprog.apps.api_server import serve_api, sse_events
from visprog.apps import api_command
from visprog.apps.api_ray import (
    DEPLOYMENT,
    TOKEN_ENV,
    PluginFile,
    ReplicaSettings,
    build_app,
    plugin_files,
    replica_options,
    serve_missing,  # noqa: F401 (needs_serve's condition names it)
    serve_on_ray,
)
from visprog.apps.api_service import ApiSettings
from visprog.apps.cli import main
from visprog.errors import ConfigError
from visprog.language.signatures import Registry
from visprog.running.plugins import load_plugin_files

#: Evaluated when such a test is set up (importing Ray Serve takes seconds): not at collection.
needs_serve = pytest.mark.skipif(
    "serve_missing() is not None", reason="the ray engine of visprog api needs Ray Serve: pip install 'visprog[ray]'"
)

README = Path(__file__).resolve().parents[3] / "README.md"
ROOT = str(Path(__file__).resolve().parents[3])  # the replicas import tests.visprog.apps.test_api_ray

FACES = "OBJ0=FaceDet(image=IMAGE)\nANSWER0=Count(box=OBJ0)\nFINAL_RESULT=Result(var=ANSWER0)"
EMOJI = (
    "OBJ0=FaceDet(image=IMAGE)\nIMAGE0=Emoji(image=IMAGE, object=OBJ0, emoji='grinning_face')\n"
    "FINAL_RESULT=Result(var=IMAGE0)"
)
WHOAMI = "A=Whoami(text='{}')\nFINAL_RESULT=Result(var=A)"

PLUGIN = '''
import os
import time

from visprog.language.signatures import module


def _batch(calls, ctx):
    time.sleep(0.5)
    return [f"{os.getpid()} {len(calls)} {c['text']}" for c in calls]


@module(batch=_batch)
def Whoami(text: str) -> str:
    """The process that runs the call, the size of its batch, and the text.

    Args:
        text: any text.
    """
    return _batch([{"text": text}], None)[0]
'''

#: The Serve config file of the README's "Scale out on Ray" (the test below loads every such file it finds there).
SERVE_YAML = """\
# serve.yaml: `serve deploy serve.yaml` (or `serve run serve.yaml`) on the cluster's head node
proxy_location: EveryNode          # a proxy on every node: a load balancer in front may send to any
http_options:
  host: 0.0.0.0
  port: 8000
applications:
  - name: visprog
    route_prefix: /
    import_path: visprog.apps.api_ray:build_app
    runtime_env:
      env_vars:                    # the builder and every replica see these
        VISPROG_API_TOKEN: change-me
        OPENAI_BASE_URL: http://llm.internal:8001/v1
        OPENAI_API_KEY: sk-change-me
    args:                          # visprog api's options
      replicas: 4                  # 2 nodes with 2 GPUs each: one replica per GPU
      replica_gpus: 1              # 0.5: two replicas share a GPU
      window_ms: 5
      max_concurrent: 16
      max_queue: 64
      request_timeout: 300
      max_upload_mb: 20
      llm:
        model: Qwen/Qwen2.5-7B-Instruct
      modules:
        FaceDet:
          backend: cascade
      plugins: [/shared/visprog/my_modules.py]   # read where the app is built, sent to every replica
"""


def registry() -> Registry:
    """The offline built-ins and ``tests.fakes`` (called in the replicas too)."""
    return fakes.registry()


def astronaut() -> str:
    from skimage import data

    buffer = io.BytesIO()
    PILImage.fromarray(data.astronaut()).resize((256, 256)).save(buffer, "PNG")  # the cascade finds one face
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def llm() -> Iterator[ScriptedServer]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NO_PROXY", "127.0.0.1,localhost")
        mp.setenv("no_proxy", "127.0.0.1,localhost")
        with serve_scripted() as scripted:
            yield scripted


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory, llm: ScriptedServer) -> ReplicaSettings:
    plugin = tmp_path_factory.mktemp("plugins") / "whoami.py"
    plugin.write_text(PLUGIN, encoding="utf-8")
    return ReplicaSettings(
        api=ApiSettings(window=0.2, timeout=30.0, max_upload_bytes=2_000_000, max_pixels=1_000_000),
        planner={"base_url": llm.url, "model": "tiny", "max_retries": 0, "timeout": 10, "cache": False},
        modules={"FaceDet": {"backend": "cascade"}},
        registry="tests.visprog.apps.test_api_ray:registry",
        plugins=(PluginFile.read(plugin),),
    )


@pytest.fixture(scope="module")
def ray_api(settings: ReplicaSettings) -> Iterator[str]:
    """The API on Ray Serve (two CPU replicas) while the module's tests run; yields its URL."""
    import ray

    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": ROOT, "NO_PROXY": "127.0.0.1,localhost"}},
    )
    port, out, stop = free_port(), io.StringIO(), threading.Event()
    failed: list[BaseException] = []

    def run() -> None:
        try:
            serve_on_ray(settings, host="127.0.0.1", port=port, out=out, stop=stop, replicas=2)
        except BaseException as e:
            failed.append(e)

    thread = threading.Thread(target=run, name="serve-on-ray", daemon=True)
    thread.start()
    deadline = time.monotonic() + 180
    try:
        while "visprog API on Ray Serve" not in out.getvalue():
            assert thread.is_alive() and time.monotonic() < deadline, f"the API did not start on Ray Serve: {failed}"
            time.sleep(0.1)
        assert "2 replica(s), on CPUs" in out.getvalue()
        yield f"http://127.0.0.1:{port}"
    finally:
        stop.set()
        thread.join(60)
        ray.shutdown()  # Serve's actors with it


@pytest.fixture(scope="module")
def local_api(settings: ReplicaSettings) -> Iterator[str]:
    with serve_api(settings.build_app()) as url:
        yield url


def post(url: str, path: str, **kwargs: Any) -> httpx.Response:
    return httpx.post(url + path, trust_env=False, timeout=60, **kwargs)


def without_timings(value: Any) -> Any:
    """``value`` without what differs from run to run: timings and seconds."""
    if isinstance(value, dict):
        return {k: without_timings(v) for k, v in value.items() if k not in ("timings", "seconds")}
    if isinstance(value, list):
        return [without_timings(v) for v in value]
    return value


REQUESTS: list[tuple[str, str, dict[str, Any]]] = [
    ("GET", "/healthz", {}),
    ("GET", "/readyz", {}),
    ("GET", "/v1/modules", {}),
    ("POST", "/v1/run", {"json": {"program": FACES, "images": {"IMAGE": "<astronaut>"}}}),
    ("POST", "/v1/run", {"json": {"program": EMOJI, "images": {"IMAGE": "<astronaut>"}, "trace": False}}),
    ("POST", "/v1/check", {"json": {"program": "OBJ0=FaceDet(image=IMAGE)\nANSWER0=Cuont(box=OBJ0)"}}),
    ("POST", "/v1/check", {"json": {"program": FACES, "inputs": ["IMAGE"]}}),
    ("POST", "/v1/run", {"json": {"program": "A=Nope(image=IMAGE)", "images": {"IMAGE": "<astronaut>"}}}),
    ("POST", "/v1/run", {"json": {"program": FACES, "images": {"IMAGE": "http://example.com/a.png"}}}),
    ("POST", "/v1/run", {"content": b"{not json", "headers": {"Content-Type": "application/json"}}),
    ("POST", "/v1/ask", {"json": {"text": "How many people?", "images": {"IMAGE": "<astronaut>"}}}),
    ("GET", "/v1/nowhere", {}),
]


@needs_serve
def test_the_same_json_as_the_local_server(ray_api: str, local_api: str, llm: ScriptedServer) -> None:
    image = astronaut()
    answers: dict[str, list[tuple[int, Any]]] = {}
    for url in (local_api, ray_api):
        llm.script([FACES])  # the one request that plans
        for method, path, kwargs in REQUESTS:
            if "json" in kwargs:
                images = {k: image if v == "<astronaut>" else v for k, v in kwargs["json"].get("images", {}).items()}
                kwargs = {**kwargs, "json": {**kwargs["json"], **({"images": images} if images else {})}}
            r = httpx.request(method, url + path, trust_env=False, timeout=60, **kwargs)
            answers.setdefault(url, []).append((r.status_code, without_timings(r.json())))
    local, ray = answers[local_api], answers[ray_api]
    for (method, path, _), here, there in zip(REQUESTS, local, ray, strict=True):
        assert here == there, f"{method} {path}"
    statuses = [status for status, _ in local]
    assert statuses == [200, 200, 200, 200, 200, 200, 200, 422, 422, 400, 200, 404]
    assert local[3][1]["result"] == 1 and local[10][1]["result"] == 1  # one face, run and asked
    assert PILImage.open(io.BytesIO(base64.b64decode(local[4][1]["result_image"]))).size == (256, 256)
    assert "Whoami" in {m["name"] for m in local[2][1]}  # the plugin file's module, in the replicas too
    assert [r["error"]["code"] for _, r in (local[7], local[8], local[9], local[11])] == [
        "invalid_program",
        "url_not_allowed",
        "bad_json",
        "not_found",
    ]
    openapi = [httpx.get(url + "/openapi.json", trust_env=False).json() for url in (local_api, ray_api)]
    assert openapi[0] == openapi[1] and "/v1/run" in openapi[0]["paths"]


@needs_serve
def test_events_stream_through_serve(ray_api: str, local_api: str) -> None:
    body = {"program": FACES, "images": {"IMAGE": astronaut()}, "trace": False}
    streams = []
    for url in (local_api, ray_api):
        r = post(url, "/v1/run", json=body, headers={"Accept": "text/event-stream"})
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        streams.append(sse_events(r.text))
    names = [[name for name, _ in events] for events in streams]
    assert names[0] == names[1] and names[1][-1] == "result" and len(names[1]) > 3


@needs_serve
def test_concurrent_requests_batch_within_each_replica(ray_api: str) -> None:
    def ask(k: int) -> str:
        r = post(ray_api, "/v1/run", json={"program": WHOAMI.format(k), "trace": False})
        assert r.status_code == 200, r.text
        return str(r.json()["result"])

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(ask, range(8)))
    runs = [answer.split() for answer in answers]
    assert [text for _, _, text in runs] == [str(k) for k in range(8)]  # each request its own answer
    by_replica: dict[str, list[int]] = {}
    for pid, size, _ in runs:
        by_replica.setdefault(pid, []).append(int(size))
    # Serve's router picks among the replicas by the requests they hold: on a busy machine one replica may take
    # all eight; what must hold is that requests at one replica share its batches, and only its own.
    assert 1 <= len(by_replica) <= 2, by_replica
    assert max(int(size) for _, size, _ in runs) > 1, by_replica  # and batched what came to them together
    for sizes in by_replica.values():
        assert all(size <= len(sizes) for size in sizes)  # a batch holds only its own replica's requests


def readme_serve_configs() -> list[str]:
    """The Serve config files (```yaml blocks naming visprog.apps.api_ray) of the README."""
    text = README.read_text(encoding="utf-8") if README.is_file() else ""
    return [b for b in re.findall(r"```yaml\n(.*?)```", text, flags=re.S) if "visprog.apps.api_ray" in b]


@needs_serve
@pytest.mark.parametrize("config", [SERVE_YAML, *readme_serve_configs()])
def test_a_serve_config_names_a_builder_that_makes_the_app(
    config: str, ray_api: str, settings: ReplicaSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    import yaml
    from ray import serve
    from ray.serve.schema import ServeDeploySchema

    schema = ServeDeploySchema.model_validate(yaml.safe_load(config))  # what `serve deploy` checks
    (app,) = schema.applications
    module_name, _, attr = app.import_path.partition(":")
    builder = getattr(importlib.import_module(module_name), attr)
    assert builder is build_app
    for name, value in (app.runtime_env or {}).get("env_vars", {}).items():
        monkeypatch.setenv(name, value)
    args = {
        **app.args,
        "replicas": 2,  # this machine's cluster: no GPU
        "registry": settings.registry,  # not the process-wide registry of this test run
        "plugins": [plugin.path for plugin in settings.plugins],
    }
    built = builder(args)
    assert isinstance(built, serve.Application)
    deployment = built._bound_deployment
    assert deployment.name == DEPLOYMENT and deployment.num_replicas == 2
    assert deployment.max_ongoing_requests >= app.args.get("max_concurrent", 16) + app.args.get("max_queue", 64)
    assert "num_gpus" not in (deployment.ray_actor_options or {})
    assert TOKEN_ENV == api_command.TOKEN_ENV  # the builder reads the token where visprog api does
    with pytest.raises(ConfigError, match=r"unknown argument\(s\) replica_gpu;"):
        builder({**args, "replica_gpu": 1})


def test_replicas_per_gpu_or_on_cpus() -> None:
    n, options, device = replica_options({"CPU": 16.0, "GPU": 4.0}, None, None, 1.0)
    assert (n, options["num_gpus"], options["num_cpus"], device) == (4, 1.0, 1.0, "cuda")
    assert replica_options({"CPU": 16.0, "GPU": 4.0}, "cuda", None, 0.5)[0] == 8  # two on each GPU
    assert replica_options({"CPU": 16.0, "GPU": 4.0}, None, 2, 1.0)[0] == 2
    n, options, device = replica_options({"CPU": 16.0, "GPU": 4.0}, "cpu", None, 1.0)
    assert (n, "num_gpus" in options, device) == (2, False, "cpu")  # CPU replicas reserve no GPU
    n, options, device = replica_options({"CPU": 1.0}, None, 4, 1.0)
    assert (n, options, device) == (4, {"num_cpus": 0.25}, "cpu")
    with pytest.raises(ConfigError, match="5 replica\\(s\\) of 1 GPU each need 5 GPUs, but the Ray cluster has 4"):
        replica_options({"CPU": 16.0, "GPU": 4.0}, None, 5, 1.0)
    with pytest.raises(ConfigError, match="--device cuda:1: the Ray cluster has no GPU"):
        replica_options({"CPU": 16.0}, "cuda:1", None, 1.0)


def test_plugin_files_reach_a_machine_without_them(tmp_path: Path) -> None:
    first, second = tmp_path / "a" / "whoami.py", tmp_path / "b" / "shout.py"
    for path, text in ((first, PLUGIN), (second, PLUGIN.replace("Whoami", "Shout"))):
        path.parent.mkdir()
        path.write_text(text, encoding="utf-8")
    reg = registry()
    load_plugin_files(reg, [second, first])
    assert plugin_files(reg) == [second.resolve(), first.resolve()]  # in the order they were loaded
    shipped = ReplicaSettings(
        registry=f"{__name__}:registry", plugins=tuple(PluginFile.read(p) for p in (second, first))
    )
    assert shipped.build_registry()["Whoami"].source == f"plugin file {first.resolve()}"  # the file itself
    first.unlink()  # a replica on a machine without it: a copy of the text
    copied = shipped.build_registry()
    assert {"Whoami", "Shout"} <= {spec.name for spec in copied}
    assert copied["Whoami"].source != f"plugin file {first.resolve()}"
    with pytest.raises(ConfigError, match=r"plugin file .*whoami\.py: cannot be read"):
        PluginFile.read(first)


def test_ray_options_are_checked(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["api", "--port", str(free_port()), "--replicas", "2"]) == 2
    assert "--replicas: only with --engine ray" in capsys.readouterr().err
    for argv, message in (
        (["--replicas", "0"], "argument --replicas: must be 1 or more, got 0"),
        (["--replica-gpus", "0"], "argument --replica-gpus: must be a finite number more than 0, got 0"),
    ):
        with pytest.raises(SystemExit) as exited:
            main(["api", "--engine", "ray", *argv])
        assert exited.value.code == 2 and message in capsys.readouterr().err


def test_without_ray_serve_one_line_names_the_pip_command(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "ray.serve", None)  # as if ray[serve] were not installed
    assert main(["api", "--engine", "ray", "--port", str(free_port())]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "the ray engine needs Ray Serve" in err[0] and "pip install 'visprog[ray]'" in err[0]


@needs_serve
def test_a_cluster_address_where_nothing_listens_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    address = f"127.0.0.1:{free_port()}"
    assert main(["api", "--engine", "ray", "--ray-address", address]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: cannot connect to the Ray cluster at {address}: [Errno 111] Connection refused"]
