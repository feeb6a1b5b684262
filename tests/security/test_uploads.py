"""Hostile uploads to the web app: the upload and pixel limits hold however an image arrives.

A ``data:`` URL in a request once skipped the upload limit, and Gradio decoded
it whole (a 10000x10000 PNG of 0.3 MB took 7 s and 300 MB) before visprog
looked at it. Every image now goes through one check: its bytes (a ``data:``
URL's from its length, before decoding), then its pixels from the header,
and only then is it decoded. Gradio's own refusals come back as the app's
messages.
"""

from __future__ import annotations

import base64
import functools
import io
import json
import struct
import time
import uuid
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image as PILImage
from PIL import ImageFile

from tests import fakes
from visprog.apps.webapp_files import example_rows
from visprog.apps.webapp_uploads import OVER_LIMIT, Pasted, Refused, data_url_image, load_uploads, upload_value

# Gradio's own queue code warns under recent pandas; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:::gradio")

#: The app's upload limit in these tests, in bytes.
LIMIT = 100_000
QUICK = "ANSWER0=Eval(expr='2 + 3')\nFINAL_RESULT=Result(var=IMAGE)"


def png_header(width: int, height: int) -> bytes:
    """A PNG of a few bytes whose header says ``width`` x ``height`` (its pixel data is one short row)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    pixels = zlib.compress(b"\x00" + b"\x00" * 48)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


@functools.cache
def black_png(width: int, height: int) -> bytes:
    """A real PNG of ``width`` x ``height`` black pixels (it compresses well: 0.3 MB for 10000x10000)."""
    out = io.BytesIO()
    PILImage.new("L", (width, height)).save(out, format="PNG")
    return out.getvalue()


def data_url(data: bytes, kind: str = "image/png") -> str:
    return f"data:{kind};base64,{base64.b64encode(data).decode('ascii')}"


class Payload:
    """What Gradio hands a component's ``preprocess``: its FileData, with a path or a url."""

    def __init__(self, *, path: str | None = None, url: str | None = None, orig_name: str | None = None) -> None:
        self.path, self.url, self.orig_name = path, url, orig_name


@pytest.fixture
def decoded(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """The sizes of the images Pillow decodes while the test runs."""
    sizes: list[tuple[int, int]] = []
    load = ImageFile.ImageFile.load

    def recording(self: Any) -> Any:
        sizes.append(self.size)
        return load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", recording)
    return sizes


# --- the one check, called as the app calls it ------------------------------------------------


def test_a_data_url_over_the_limit_is_refused_from_its_length_before_decoding() -> None:
    huge = "data:image/png;base64," + "A" * (4 * LIMIT // 3 + 400) + "!!!! not base64 at all"
    t0 = time.perf_counter()
    value = upload_value(Payload(url=huge), "IMAGE", max_upload_bytes=LIMIT)
    assert time.perf_counter() - t0 < 0.5
    assert isinstance(value, Refused)  # handed on, never raised inside Gradio
    assert value.title == "IMAGE: the image is too large" and value.uploads
    assert value.message == "The image is 0.1 MB; the limit is 0.1 MB per image."
    with pytest.raises(Refused) as raised:
        load_uploads({"IMAGE": value}, max_upload_bytes=LIMIT)
    assert raised.value is value


def test_a_huge_image_header_is_refused_before_any_pixel_is_decoded(
    tmp_path: Path, decoded: list[tuple[int, int]]
) -> None:
    for data in (png_header(10_000, 10_000), black_png(10_000, 10_000)):
        assert len(data) < LIMIT * 4
        upload = tmp_path / "huge.png"
        upload.write_bytes(data)
        pasted = upload_value(Payload(url=data_url(data), orig_name="huge.png"), "LEFT", max_upload_bytes=10**7)
        assert isinstance(pasted, Pasted) and pasted.data == data and pasted.name == "huge.png"
        for value in (str(upload), pasted):  # a file upload, and a data: URL
            t0 = time.perf_counter()
            with pytest.raises(Refused) as raised:
                load_uploads({"LEFT": value}, max_upload_bytes=10**7)
            assert time.perf_counter() - t0 < 0.5
            assert raised.value.title == "LEFT: the image has too many pixels"
            assert raised.value.message.startswith(
                "huge.png: image is 10000x10000 = 100,000,000 pixels, over the limit"
            )
    assert (10_000, 10_000) not in decoded


def test_a_data_url_that_is_not_base64_gets_a_message(decoded: list[tuple[int, int]]) -> None:
    plain = upload_value(Payload(url="data:image/png,%89PNG"), "IMAGE", max_upload_bytes=LIMIT)
    assert isinstance(plain, Refused) and plain.title == "IMAGE: the image cannot be used"
    assert plain.message == "pasted image: a data: URL must hold the image in base64 (data:image/png;base64,...)"
    with pytest.raises(Refused, match=r"paste\.png: its data: URL is not valid base64"):
        data_url_image("data:image/png;base64,iVBOR*w0K", "IMAGE", max_upload_bytes=LIMIT, name="paste.png")
    nothing = upload_value(Payload(), "RIGHT", max_upload_bytes=LIMIT)
    assert isinstance(nothing, Refused) and nothing.message == "the request named no file and held no image"
    assert upload_value(None, "IMAGE", max_upload_bytes=LIMIT) is None
    with pytest.raises(Refused, match=r"RIGHT: the image cannot be used: notes\.txt: not an image Pillow can read"):
        load_uploads({"RIGHT": Pasted("notes.txt", b"just some words")})
    assert decoded == []


def test_a_file_the_page_held_back_as_over_the_limit_gets_the_apps_message(tmp_path: Path) -> None:
    held = tmp_path / "photo.jpg"
    held.write_bytes(OVER_LIMIT + b"25000000")  # what the page's script sends in place of a 25 MB file
    with pytest.raises(Refused) as raised:
        load_uploads({"IMAGE": str(held)})
    assert raised.value.title == "IMAGE: the file is too large"
    assert raised.value.message == "The file is 25.0 MB; the limit is 20.0 MB per image."
    held.write_bytes(OVER_LIMIT + b"12")  # a note that claims a size within the limit: just a file
    with pytest.raises(Refused, match=r"photo\.jpg: not an image Pillow can read"):
        load_uploads({"IMAGE": str(held)})


def test_the_examples_go_through_the_same_check() -> None:
    (image, _, _, _), *_ = example_rows()
    assert image is not None and load_uploads({"IMAGE": image})["IMAGE"].mode == "RGB"
    with pytest.raises(Refused, match="IMAGE: the file is too large"):
        load_uploads({"IMAGE": image}, max_upload_bytes=1_000)
    with pytest.raises(Refused, match="IMAGE: the image has too many pixels"):
        load_uploads({"IMAGE": image}, max_pixels=1_000)


# --- the real app over HTTP -------------------------------------------------------------------


@pytest.fixture(scope="module")
def app_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    pytest.importorskip("gradio", reason="gradio is not installed (pip install 'visprog[web]')")
    from visprog.apps.webapp import build_app, launch_options
    from visprog.running.runtime import Runtime

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GRADIO_ANALYTICS_ENABLED", "False")
        mp.setenv("GRADIO_TEMP_DIR", str(tmp_path_factory.mktemp("gradio")))
        for name in ("NO_PROXY", "no_proxy"):
            mp.setenv(name, "127.0.0.1,localhost")
        runtime = Runtime(device_request="cpu", progress=False)
        web = build_app(registry=fakes.registry(), runtime=runtime, max_upload_bytes=LIMIT)
        web.launch(prevent_thread_lock=True, server_name="127.0.0.1", quiet=True, **launch_options(LIMIT))
        try:
            yield str(web.local_url)
        finally:
            web.close()


def _run_program(url: str, image: Any) -> dict[str, Any]:
    """'Run edited program' as a request to Gradio's queue (the program, its number, the server's copy of the
    program box, then the uploads), with ``image`` as the IMAGE upload's FileData."""
    import httpx

    config = httpx.get(f"{url}config", timeout=30).json()
    fn = next(d.get("id", i) for i, d in enumerate(config["dependencies"]) if d.get("api_name") == "on_run")
    session = uuid.uuid4().hex
    body = {"data": [QUICK, 0, None, image, None, None], "fn_index": fn, "session_hash": session, "trigger_id": None}
    assert httpx.post(f"{url}gradio_api/queue/join", json=body, timeout=30).status_code == 200
    with httpx.stream("GET", f"{url}gradio_api/queue/data", params={"session_hash": session}, timeout=30) as events:
        for line in events.iter_lines():
            message = json.loads(line[5:]) if line.startswith("data:") else {}
            if message.get("msg") == "process_completed":
                return dict(message)
    raise AssertionError("the request never completed")


def _file(url: str | None = None, path: str | None = None) -> dict[str, Any]:
    return {"path": path, "url": url, "orig_name": "pasted.png", "meta": {"_type": "gradio.FileData"}}


def test_through_the_app_a_data_url_obeys_both_limits(app_url: str, decoded: list[tuple[int, int]]) -> None:
    over = _run_program(app_url, _file(data_url(b"\x89PNG" + b"\x00" * (2 * LIMIT))))
    assert over["success"] is True  # the app's answer, in its status panel: not Gradio's "Error"
    status = over["output"]["data"][0]
    assert "IMAGE: the image is too large" in status and "the limit is 0.1 MB per image" in status
    t0 = time.perf_counter()
    huge = _run_program(app_url, _file(data_url(black_png(10_000, 10_000))))
    assert time.perf_counter() - t0 < 3.0  # Gradio decoded this one for 7 s
    status = huge["output"]["data"][0]
    assert "IMAGE: the image has too many pixels" in status and "pasted.png: image is 10000x10000" in status
    assert (10_000, 10_000) not in decoded


def test_through_the_app_gradios_own_refusals_are_the_apps_messages(app_url: str) -> None:
    elsewhere = _run_program(app_url, _file(path="/etc/hostname"))  # a file of the server, not uploaded
    assert elsewhere["success"] is False and elsewhere["title"] == "An image cannot be used"
    assert elsewhere["output"]["error"].startswith("The request names a file this app did not receive as an upload")
    assert "/etc" not in json.dumps(elsewhere)
    malformed = _run_program(app_url, {"path": ["not", "a", "path"], "meta": {"_type": "gradio.FileData"}})
    assert malformed["success"] is False and malformed["title"] == "An image cannot be used"
    assert malformed["output"]["error"].startswith("The request's image is not a file Gradio can take")
