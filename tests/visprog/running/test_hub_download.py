"""``visprog models pull`` and the missing-weights path, against a fake Hugging Face Hub on 127.0.0.1.

The fake hub (:func:`serve_hub`) speaks the part of the hub's HTTP protocol
that the installed ``huggingface_hub`` uses to download a model repository:

- ``GET /api/models/{repo_id}[/revision/{revision}]``: the model info (``sha``, ``siblings``);
- ``GET /api/models/{repo_id}/tree/{revision}``: the file listing (``path``, ``size``, ``oid``, ``lfs``);
- ``HEAD``/``GET /{repo_id}/resolve/{revision}/{filename}``: a file, with ``X-Repo-Commit``, ``ETag``,
  ``Content-Length`` and, for weight files stored in LFS, ``X-Linked-Etag`` and ``X-Linked-Size``;
- unknown repositories, revisions and files answer 404 with the hub's ``X-Error-Code``.

It serves a tiny BLIP VQA model (built from a config, saved with
``save_pretrained``) plus what a real repository also holds: a pickled copy of
the weights, a TensorFlow copy, ``README.md`` and ``.gitattributes``. Every
``visprog`` command runs in a subprocess with ``HF_ENDPOINT`` pointing at the
fake hub (``huggingface_hub`` reads it at import time) and ``HF_HOME`` in a
temporary folder, online only where the test says so (``HF_HUB_OFFLINE=1``
otherwise), as a user would run it.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest

from visprog.running.hub import redundant_files

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from tests.modules.test_vqa import build_blip  # noqa: E402  (needs torch and transformers)
from tests.servers import closed_port, serve  # noqa: E402

FAKE_ID = "visprog-tests/tiny-blip-vqa"
COMMIT = "c0ffee" + "0" * 34
PROGRAM = "ANSWER0=Vqa(image=IMAGE, question='what is the person wearing?')\nFINAL_RESULT=Result(var=ANSWER0)"
#: Files the hub stores in LFS (the others are plain git blobs).
LFS_SUFFIXES = (".safetensors", ".bin", ".h5", ".msgpack", ".pt", ".pth", ".onnx")
_SOCKET_TIMEOUT = 5.0


# --- the fake hub -------------------------------------------------------------


def _git_blob_id(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


@dataclass
class FakeHub:
    """The repositories a fake hub serves (repo id -> file name -> bytes) and the requests it answered."""

    repos: dict[str, dict[str, bytes]]
    commit: str = COMMIT
    url: str = ""
    #: (method, path) of every request, in order
    requests: list[tuple[str, str]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, method: str, path: str) -> None:
        with self._lock:
            self.requests.append((method, path))

    def downloaded(self, repo_id: str) -> list[str]:
        """The files of ``repo_id`` whose bytes were sent (GET), sorted."""
        prefix = f"/{repo_id}/resolve/"
        with self._lock:
            paths = [p for m, p in self.requests if m == "GET" and p.startswith(prefix)]
        return sorted(p[len(prefix) :].partition("/")[2] for p in paths)

    # the hub's answers, as (status, headers, body)

    def _file_entry(self, name: str, content: bytes) -> dict[str, Any]:
        entry: dict[str, Any] = {"type": "file", "path": name, "size": len(content), "oid": _git_blob_id(content)}
        if name.endswith(LFS_SUFFIXES):
            entry["lfs"] = {"oid": hashlib.sha256(content).hexdigest(), "size": len(content), "pointerSize": 134}
        return entry

    def _info(self, repo_id: str) -> dict[str, Any]:
        return {
            "id": repo_id,
            "modelId": repo_id,
            "sha": self.commit,
            "private": False,
            "disabled": False,
            "gated": False,
            "tags": ["transformers"],
            "siblings": [{"rfilename": name} for name in sorted(self.repos[repo_id])],
        }

    def answer(self, method: str, path: str) -> tuple[int, dict[str, str], bytes]:
        api = path.startswith("/api/models/")
        parts = (path[len("/api/models/") :] if api else path.lstrip("/")).split("/")
        repo_id = "/".join(parts[:2])
        rest = parts[2:]
        if repo_id not in self.repos:
            return _error(404, "RepoNotFound", "Repository not found")
        files = self.repos[repo_id]
        if api and rest and rest[0] in ("revision", "tree"):
            if len(rest) < 2 or rest[1] not in ("main", self.commit):
                return _error(404, "RevisionNotFound", "Invalid rev id")
            if rest[0] == "revision":
                return _json(self._info(repo_id))
            folder = "/".join(rest[2:])
            prefix = f"{folder}/" if folder else ""
            return _json([self._file_entry(n, c) for n, c in sorted(files.items()) if n.startswith(prefix)])
        if api and not rest:
            return _json(self._info(repo_id))
        if not api and len(rest) >= 3 and rest[0] == "resolve":
            commit = {"X-Repo-Commit": self.commit}
            if rest[1] not in ("main", self.commit):
                return _error(404, "RevisionNotFound", "Invalid rev id")
            name = "/".join(rest[2:])
            if name not in files:
                return _error(404, "EntryNotFound", f"{name} does not exist", commit)
            content = files[name]
            entry = self._file_entry(name, content)
            headers = {**commit, "ETag": f'"{entry["oid"]}"', "Content-Type": "application/octet-stream"}
            if "lfs" in entry:
                sha256 = entry["lfs"]["oid"]
                headers |= {"ETag": f'"{sha256}"', "X-Linked-Etag": f'"{sha256}"', "X-Linked-Size": str(len(content))}
            return 200, headers, content
        return _error(404, "", f"not served by the fake hub: {method} {path}")


def _json(data: Any) -> tuple[int, dict[str, str], bytes]:
    return 200, {"Content-Type": "application/json"}, json.dumps(data).encode()


def _error(
    status: int, code: str, message: str, extra: Mapping[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    headers = {"Content-Type": "application/json", "X-Error-Message": message, **(extra or {})}
    if code:
        headers["X-Error-Code"] = code
    return status, headers, json.dumps({"error": message}).encode()


def _handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        timeout = _SOCKET_TIMEOUT

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            pass

        def _serve(self, method: str) -> None:
            path = unquote(urlsplit(self.path).path)
            hub.record(method, path)
            status, headers, body = hub.answer(method, path)
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if method == "GET":
                self.wfile.write(body)

        def do_GET(self) -> None:
            self._serve("GET")

        def do_HEAD(self) -> None:
            self._serve("HEAD")

    return Handler


@contextlib.contextmanager
def serve_hub(repos: dict[str, dict[str, bytes]]) -> Iterator[FakeHub]:
    """A fake Hugging Face Hub serving ``repos`` on an ephemeral port of 127.0.0.1, while the block runs."""
    hub = FakeHub(repos)
    with serve(_handler(hub)) as url:
        hub.url = url
        yield hub


# --- running visprog as a user would -------------------------------------------

_HF_VARIABLES = ("HF_", "HUGGINGFACE_", "TRANSFORMERS_", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")


def visprog(
    args: list[str], *, endpoint: str, hf_home: Path, online: bool, cwd: Path
) -> subprocess.CompletedProcess[str]:
    """``python -m visprog ARGS`` with the hub at ``endpoint`` and its cache in ``hf_home``."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith(_HF_VARIABLES)}
    env |= {
        "HF_ENDPOINT": endpoint,
        "HF_HOME": str(hf_home),
        "HF_HUB_CACHE": str(hf_home / "hub"),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_ETAG_TIMEOUT": "5",
        "HF_HUB_DOWNLOAD_TIMEOUT": "5",
        "NO_PROXY": "127.0.0.1,localhost",
        "OMP_NUM_THREADS": "1",
    }
    if not online:
        env |= {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "visprog", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


# --- fixtures -------------------------------------------------------------------


@pytest.fixture(scope="module")
def blip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-blip-vqa")
    build_blip(folder)
    return folder


@pytest.fixture(scope="module")
def repo(blip_dir: Path) -> dict[str, bytes]:
    """The fake repository: the saved folder, plus the copies a real one holds that a pull skips."""
    from safetensors.torch import load_file

    files = {p.name: p.read_bytes() for p in blip_dir.iterdir() if p.is_file()}
    pickled = io.BytesIO()
    torch.save(load_file(blip_dir / "model.safetensors"), pickled)
    files["pytorch_model.bin"] = pickled.getvalue()
    files["tf_model.h5"] = b"not really HDF5"
    files["README.md"] = b"---\nlicense: bsd-3-clause\n---\n# tiny BLIP for visprog's tests\n"
    files[".gitattributes"] = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"
    return files


@pytest.fixture(scope="module")
def photo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from PIL import Image
    from skimage import data

    path = tmp_path_factory.mktemp("photo") / "astronaut.png"
    Image.fromarray(data.astronaut()).resize((64, 64)).save(path)
    return path


@pytest.fixture(scope="module")
def reference_answer(blip_dir: Path, photo: Path) -> str:
    """The answer with the saved folder loaded directly (no hub, no cache)."""
    from visprog.running.images import load_image
    from visprog.running.interpreter import Interpreter
    from visprog.running.runtime import Runtime

    runtime = Runtime(device_request="cpu", modules={"Vqa": {"model": str(blip_dir)}})
    answer = Interpreter(runtime=runtime).run(PROGRAM, {"IMAGE": load_image(str(photo))}).result
    assert isinstance(answer, str) and answer  # the tiny model's answer is a few words, not empty
    return answer


# --- tests --------------------------------------------------------------------


def test_pull_fills_the_cache_then_offline_runs_load_from_it(
    repo: dict[str, bytes], photo: Path, reference_answer: str, tmp_path: Path
) -> None:
    hf_home = tmp_path / "hf"
    run = ["exec", PROGRAM, "--image", str(photo), "--model", f"Vqa={FAKE_ID}", "--device", "cpu", "-q"]
    with serve_hub({FAKE_ID: repo}) as hub:
        # 1. offline, nothing cached: the step fails and says how to get the weights
        before = visprog(run, endpoint=hub.url, hf_home=hf_home, online=False, cwd=tmp_path)
        assert before.returncode == 1, before.stderr
        assert "Traceback" not in before.stderr
        assert f"Vqa: model '{FAKE_ID}' is not available" in before.stderr
        assert "HF_HUB_OFFLINE=1" in before.stderr
        assert "visprog models pull Vqa" in before.stderr and f"hf download {FAKE_ID}" in before.stderr
        assert hub.requests == []  # offline means offline

        # 2. pull, online
        pulled = visprog(
            ["models", "pull", "Vqa", "--model", f"Vqa={FAKE_ID}"],
            endpoint=hub.url,
            hf_home=hf_home,
            online=True,
            cwd=tmp_path,
        )
        assert pulled.returncode == 0, pulled.stderr
        assert "Traceback" not in pulled.stderr
        skipped = {"tf_model.h5", *redundant_files(repo)}
        assert skipped == {"tf_model.h5", "pytorch_model.bin"}
        wanted = sorted(set(repo) - skipped)
        assert hub.downloaded(FAKE_ID) == wanted  # every file once, the redundant copies never
        snapshot = hf_home / "hub" / "models--visprog-tests--tiny-blip-vqa" / "snapshots" / COMMIT
        assert f"pulling {FAKE_ID} for Vqa (blip)" in pulled.stdout
        assert f"-> {snapshot}" in pulled.stdout
        assert sorted(p.name for p in snapshot.iterdir()) == wanted
        assert all((snapshot / name).read_bytes() == repo[name] for name in wanted)
        served = len(hub.requests)

        # 3. offline again: `models list` sees it, and the program loads it from the cache
        listed = visprog(
            ["models", "list", "--model", f"Vqa={FAKE_ID}"],
            endpoint=hub.url,
            hf_home=hf_home,
            online=False,
            cwd=tmp_path,
        )
        assert listed.returncode == 0, listed.stderr
        row = next(line for line in listed.stdout.splitlines() if FAKE_ID in line)
        assert row.split()[-1] == "yes", listed.stdout
        after = visprog(run, endpoint=hub.url, hf_home=hf_home, online=False, cwd=tmp_path)
        assert after.returncode == 0, after.stderr
        assert after.stdout.strip().splitlines()[-1] == str(reference_answer)  # -q: the answer alone
        assert len(hub.requests) == served  # nothing asked of the hub offline

        # 4. pulling what is in the cache works offline, without the hub
        again = visprog(
            ["models", "pull", "Vqa", "--model", f"Vqa={FAKE_ID}"],
            endpoint=hub.url,
            hf_home=hf_home,
            online=False,
            cwd=tmp_path,
        )
        assert again.returncode == 0, again.stderr
        assert f"-> {snapshot}" in again.stdout
        assert len(hub.requests) == served


@pytest.mark.parametrize("where", ["server down", "unknown model", "offline"])
def test_a_failed_pull_says_why_and_names_the_model_without_a_traceback(
    repo: dict[str, bytes], tmp_path: Path, where: str
) -> None:
    with serve_hub({FAKE_ID: repo}) as hub:
        endpoint = f"http://127.0.0.1:{closed_port()}" if where == "server down" else hub.url
        model_id = "visprog-tests/no-such-model" if where == "unknown model" else FAKE_ID
        pulled = visprog(
            ["models", "pull", "Vqa", "--model", f"Vqa={model_id}"],
            endpoint=endpoint,
            hf_home=tmp_path / "hf",
            online=where != "offline",
            cwd=tmp_path,
        )
        requests = list(hub.requests)
    assert pulled.returncode == 1, pulled.stderr
    assert "Traceback" not in pulled.stderr, pulled.stderr
    assert f"pulling {model_id} for Vqa (blip)" in pulled.stdout
    assert pulled.stderr.strip().splitlines()[-1] == (
        f"error: models pull: 1 of 1 could not be fetched: Vqa ({model_id})"
    ), pulled.stderr
    error = next(line for line in pulled.stdout.splitlines() if line.startswith("  failed: "))
    assert error.startswith(f"  failed: could not download '{model_id}' from {endpoint}: "), pulled.stdout
    reason = {
        "server down": "the hub could not be reached or refused the download (ConnectError: ",
        "unknown model": "the hub has no such model, or it is private or gated (log in with: hf auth login)",
        "offline": "HF_HUB_OFFLINE=1 (unset it to download) and it is not complete in the Hugging Face cache",
    }[where]
    assert reason in error
    assert "Retrying" not in pulled.stderr  # fails at once, not after ~20 s of retries
    if where == "offline":
        assert requests == []
    assert not any(m == "GET" and "/resolve/" in p for m, p in requests)


def test_one_model_that_fails_does_not_stop_the_others(repo: dict[str, bytes], tmp_path: Path) -> None:
    missing = "visprog-tests/no-such-clip"
    with serve_hub({FAKE_ID: repo}) as hub:
        pulled = visprog(
            ["models", "pull", "Select", "Vqa", "--model", f"Select={missing}", "--model", f"Vqa={FAKE_ID}"],
            endpoint=hub.url,
            hf_home=tmp_path / "hf",
            online=True,
            cwd=tmp_path,
        )
    assert pulled.returncode == 1 and "Traceback" not in pulled.stderr, pulled.stderr
    lines = pulled.stdout.splitlines()
    assert lines[0].startswith(f"pulling {missing} for Select") and lines[1].startswith("  failed: ")
    assert lines[2] == f"pulling {FAKE_ID} for Vqa (blip)" and lines[3].startswith("  -> ")
    last = pulled.stderr.strip().splitlines()[-1]
    assert last == f"error: models pull: 1 of 2 could not be fetched: Select ({missing})"


def test_pulling_a_local_folder_downloads_nothing(blip_dir: Path, tmp_path: Path) -> None:
    with serve_hub({FAKE_ID: {}}) as hub:
        pulled = visprog(
            ["models", "pull", "Vqa", "--model", f"Vqa={blip_dir}"],
            endpoint=hub.url,
            hf_home=tmp_path / "hf",
            online=True,
            cwd=tmp_path,
        )
        assert hub.requests == []
    assert pulled.returncode == 0, pulled.stderr
    assert f"pulling {blip_dir} for Vqa (blip)\n  -> {blip_dir}\n" in pulled.stdout


def test_a_missing_model_fails_in_seconds_when_the_hub_cannot_be_reached(photo: Path, tmp_path: Path) -> None:
    endpoint = f"http://127.0.0.1:{closed_port()}"
    run = ["exec", PROGRAM, "--image", str(photo), "--model", f"Vqa={FAKE_ID}", "--device", "cpu", "-q"]
    started = time.monotonic()
    ran = visprog(run, endpoint=endpoint, hf_home=tmp_path / "hf", online=True, cwd=tmp_path)
    elapsed = time.monotonic() - started
    assert ran.returncode == 1, ran.stderr
    assert "Traceback" not in ran.stderr, ran.stderr
    assert "Retrying" not in ran.stderr, ran.stderr  # one probe, not huggingface_hub's ~30 s of retried requests
    assert (
        f"error: line 1, Vqa (step ANSWER0) failed: Vqa: model '{FAKE_ID}' is not available (it is not in the "
        f"Hugging Face cache and the hub at {endpoint} could not be reached [ConnectError: "
    ) in ran.stderr
    assert (
        "]; on a machine without network, set HF_HUB_OFFLINE=1 to skip network checks). Fetch it on a machine "
        f"with network access: visprog models pull Vqa  (or: hf download {FAKE_ID})"
    ) in ran.stderr
    assert elapsed < 10, f"took {elapsed:.1f} s"


def test_a_reachable_hub_is_asked_once_then_the_model_downloads(
    repo: dict[str, bytes], photo: Path, reference_answer: str, tmp_path: Path
) -> None:
    run = ["exec", PROGRAM, "--image", str(photo), "--model", f"Vqa={FAKE_ID}", "--device", "cpu", "-q"]
    with serve_hub({FAKE_ID: repo}) as hub:
        ran = visprog(run, endpoint=hub.url, hf_home=tmp_path / "hf", online=True, cwd=tmp_path)
        requests = list(hub.requests)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip().splitlines()[-1] == str(reference_answer)  # -q: the answer alone
    assert requests[0] == ("GET", f"/api/models/{FAKE_ID}")  # the probe, before from_pretrained
    assert requests[1] != requests[0]  # asked once (transformers may ask for the model info itself later)
    assert any(m == "GET" and p.endswith("/model.safetensors") for m, p in requests)
