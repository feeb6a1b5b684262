"""Planning with the images in view (``see_image``): the real openai client, loopback servers, the real checker."""

from __future__ import annotations

import base64
import io
import json
import sqlite3
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image as PILImage
from skimage import data

from tests import fakes
from tests.llm_server import Reply, ScriptedServer
from tests.servers import serve
from visprog.apps.cli import main
from visprog.errors import ConfigError, ServiceError
from visprog.llm import TransformersClient, client_from_options
from visprog.planner.cache import PlanCache
from visprog.planner.core import Planner, PlanningError
from visprog.solving import create_planner, solve

GOOD = "BOX0=Loc(image=IMAGE, object='dog')\nANSWER0=Count(box=BOX0)\nFINAL_RESULT=Result(var=ANSWER0)"
BAD = GOOD.replace("=Loc(", "=Locate_Things(")
#: What the image-reading server plans for a red image and for a blue one.
RED_PLAN = GOOD.replace("'dog'", "'apple'")
BLUE_PLAN = GOOD.replace("'dog'", "'sky'")


def planner_for(url: str, **options: Any) -> Planner:
    backend = client_from_options(base_url=url, model="tiny-vision", max_retries=0, timeout=5)
    return Planner(backend, registry=fakes.registry(), cache=options.pop("cache", False), **options)


def solid(color: tuple[int, int, int], size: tuple[int, int] = (300, 120)) -> PILImage.Image:
    return PILImage.new("RGB", size, color)


def decoded(part: dict[str, Any]) -> PILImage.Image:
    """The image of an ``image_url`` part, which must be a base64 JPEG data URL."""
    assert part["type"] == "image_url"
    prefix, _, payload = part["image_url"]["url"].partition(",")
    assert prefix == "data:image/jpeg;base64"
    image = PILImage.open(io.BytesIO(base64.b64decode(payload, validate=True)))
    assert image.format == "JPEG"
    image.load()
    return image


def mean_colour(image: PILImage.Image) -> tuple[float, float, float]:
    r, g, b = np.asarray(image.convert("RGB"), dtype=float).mean(axis=(0, 1))
    return float(r), float(g), float(b)


def image_parts(body: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        part
        for message in body["messages"]
        if isinstance(message["content"], list)
        for part in message["content"]
        if part["type"] == "image_url"
    ]


@pytest.fixture
def by_image() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A chat server that looks at the first image of the request: red gets RED_PLAN, blue BLUE_PLAN."""
    bodies: list[dict[str, Any]] = []
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        timeout = 5.0

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0) or 0)))
            with lock:
                bodies.append(body)
            parts = image_parts(body)
            if parts:
                r, _, b = mean_colour(decoded(parts[0]))
                content = RED_PLAN if r > b else BLUE_PLAN
            else:
                content = "I cannot see any image."
            choice = {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
            answer = {"id": "c", "object": "chat.completion", "created": 0, "model": body["model"], "choices": [choice]}
            payload = json.dumps(answer).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

    with serve(Handler) as url:
        yield f"{url}/v1", bodies


def test_the_request_carries_the_image_as_a_downscaled_jpeg_after_the_text(llm_server: ScriptedServer) -> None:
    llm_server.script([GOOD])
    planner = planner_for(llm_server.url, see_image=True, see_image_side=64)
    plan = planner.plan("gqa", "How many dogs are there?", images={"IMAGE": solid((200, 30, 30), (300, 120))})
    assert plan.program == GOOD
    messages = llm_server.requests[0].body["messages"]
    # the system prompt and the examples stay text
    assert all(isinstance(m["content"], str) for m in messages[:-1])
    text, picture = messages[-1]["content"]
    assert messages[-1]["role"] == "user"
    assert text == {"type": "text", "text": "Question: How many dogs are there?\n\nThe image IMAGE is attached."}
    image = decoded(picture)
    assert image.size == (64, 26)  # the longer side cut to 64, the shape kept
    r, g, b = mean_colour(image)
    assert r > 150 and g < 80 and b < 80


def test_a_small_image_is_not_enlarged_and_two_inputs_come_in_the_tasks_order(llm_server: ScriptedServer) -> None:
    program = (
        "ANSWER0=Vqa(image=LEFT, question='Is it red?')\nANSWER1=Vqa(image=RIGHT, question='Is it red?')\n"
        'ANSWER2=Eval(expr="{ANSWER0} and {ANSWER1}")\nFINAL_RESULT=Result(var=ANSWER2)'
    )
    llm_server.script([program])
    planner = planner_for(llm_server.url, see_image=True)
    images = {
        "RIGHT": solid((20, 20, 220), (40, 30)),
        "LEFT": solid((220, 20, 20), (40, 30)),
        "OTHER": solid((0, 0, 0)),
    }
    planner.plan("nlvr", "Both images are red.", images=images)
    text, left, right = llm_server.requests[0].body["messages"][-1]["content"]
    assert text["text"].endswith("Both images are red.\n\nThe images LEFT and RIGHT are attached, in that order.")
    assert decoded(left).size == decoded(right).size == (40, 30)
    assert mean_colour(decoded(left))[0] > 150 and mean_colour(decoded(right))[2] > 150


def test_repair_rounds_keep_the_images_in_the_users_turn(llm_server: ScriptedServer) -> None:
    llm_server.script([BAD, GOOD])
    planner = planner_for(llm_server.url, see_image=True, see_image_side=32)
    plan = planner.plan("gqa", "How many dogs are there?", images={"IMAGE": data.astronaut()})
    assert plan.program == GOOD and len(plan.attempts) == 2
    first, second = (r.body["messages"] for r in llm_server.requests)
    assert second[: len(first)] == first  # the turn with the image, unchanged
    assert second[-2] == {"role": "assistant", "content": BAD}
    assert isinstance(second[-1]["content"], str) and "unknown module 'Locate_Things'" in second[-1]["content"]
    assert decoded(image_parts({"messages": second})[0]).size == (32, 32)


def test_plans_differ_by_image_and_the_cache_tells_the_images_apart(
    by_image: tuple[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    url, bodies = by_image
    cache = PlanCache(tmp_path / "plans.sqlite")
    planner = planner_for(url, see_image=True, cache=cache)
    question = "What is in the picture?"
    red = planner.plan("gqa", question, images={"IMAGE": solid((230, 10, 10))})
    blue = planner.plan("gqa", question, images={"IMAGE": solid((10, 10, 230))})
    assert (red.program, blue.program) == (RED_PLAN, BLUE_PLAN)
    assert len(bodies) == 2 and not red.cached and not blue.cached
    with sqlite3.connect(cache.path) as conn:
        assert conn.execute("SELECT COUNT(*) FROM plans").fetchone()[0] == 2  # two keys
    again = planner.plan("gqa", question, images={"IMAGE": solid((230, 10, 10))})
    assert again.cached and again.program == RED_PLAN and len(bodies) == 2
    # the same text planned blind is another key: the server is asked, and sees no image
    blind = planner_for(url, cache=cache)
    with pytest.raises(PlanningError, match="no valid gqa program"):
        blind.plan("gqa", question, images={"IMAGE": solid((230, 10, 10))})
    assert len(bodies) == 5 and not image_parts(bodies[-1])


def test_without_see_image_the_content_is_text_and_the_cache_key_is_as_before(
    llm_server: ScriptedServer, tmp_path: Path
) -> None:
    llm_server.script([GOOD])
    cache = PlanCache(tmp_path / "plans.sqlite")
    planner = planner_for(llm_server.url, cache=cache)
    assert planner.see_image is False and planner.see_image_side == 512
    planner.plan("gqa", "How many dogs?", images={"IMAGE": solid((1, 2, 3))})
    messages = llm_server.requests[0].body["messages"]
    assert all(isinstance(m["content"], str) for m in messages)
    assert messages[-1]["content"] == "Question: How many dogs?"
    # without images the key holds no image part: the same key as a planner that never saw images
    generation = planner.backend.generation  # type: ignore[attr-defined]
    key = PlanCache.key(planner.backend.identity, json.dumps(messages, sort_keys=True), "0", "None", "", generation)
    assert cache.get(key) == GOOD


def test_solve_and_create_planner_take_see_image(by_image: tuple[str, list[dict[str, Any]]]) -> None:
    url, bodies = by_image
    solution = solve(
        "gqa",
        "What is in the picture?",
        {"IMAGE": solid((10, 10, 230))},
        registry=fakes.registry(),
        base_url=url,
        model="tiny-vision",
        cache=False,
        see_image=True,
        see_image_side=100,
    )
    assert solution.program == BLUE_PLAN and solution.result == 1
    assert decoded(image_parts(bodies[0])[0]).size == (100, 40)
    planner = create_planner(base_url=url, see_image=None, see_image_side=None)  # None: the defaults
    assert (planner.see_image, planner.see_image_side) == (False, 512)


def test_seeing_without_the_images_says_which_are_missing(llm_server: ScriptedServer) -> None:
    planner = planner_for(llm_server.url, see_image=True)
    with pytest.raises(ConfigError, match=r"see_image is on .* task nlvr .* no image was given for RIGHT"):
        planner.plan("nlvr", "Both are red.", images={"LEFT": solid((255, 0, 0))})
    with pytest.raises(ConfigError, match="no image was given for IMAGE"):
        planner.plan_samples("gqa", "How many dogs?", 2)
    assert llm_server.requests == []


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"see_image": "yes"}, "see_image (--see-image, [llm] see_image) must be true or false, got 'yes'"),
        ({"see_image": 1}, "must be true or false, got 1"),
        ({"see_image_side": 8}, "see_image_side (--see-image-side, [llm] see_image_side) must be a whole number"),
        ({"see_image_side": True}, "at least 16 (the longer side of an image sent to the model), got True"),
        ({"see_image_side": 256.0}, "got 256.0"),
    ],
)
def test_bad_settings_name_the_setting(options: dict[str, Any], message: str) -> None:
    backend = client_from_options(base_url="http://127.0.0.1:9/v1", model="m")
    with pytest.raises(ConfigError, match=r"^planner: ") as info:
        Planner(backend, cache=False, **options)
    assert message in str(info.value)


def test_a_server_that_refuses_images_gets_an_error_that_names_see_image(llm_server: ScriptedServer) -> None:
    refusal = "Invalid content type. image_url is only supported by certain models."
    llm_server.script([Reply.error(400, refusal), Reply.error(400, refusal)])
    images = {"IMAGE": solid((1, 2, 3))}
    with pytest.raises(ServiceError) as info:
        planner_for(llm_server.url, see_image=True).plan("gqa", "How many dogs?", images=images)
    message = str(info.value)
    assert info.value.per_request and "answered HTTP 400" in message and refusal in message
    assert "the model may not accept images; turn off see_image (--see-image, [llm] see_image)" in message
    with pytest.raises(ServiceError) as blind:  # the same refusal without images: no word of them
        planner_for(llm_server.url).plan("gqa", "How many dogs?", images=images)
    assert "see_image" not in str(blind.value)


def test_the_completion_style_cannot_send_images(llm_server: ScriptedServer) -> None:
    backend = client_from_options(base_url=llm_server.url, model="m", style="completion", max_retries=0)
    planner = Planner(backend, registry=fakes.registry(), cache=False, see_image=True)
    with pytest.raises(ConfigError, match=r"images need the chat style .* turn off see_image \(--see-image"):
        planner.plan("gqa", "How many dogs?", images={"IMAGE": solid((1, 2, 3))})
    assert llm_server.requests == []


@pytest.mark.parametrize("processor", [False, True])
def test_a_local_text_model_refuses_images_before_loading(tmp_path: Path, processor: bool) -> None:
    folder = tmp_path / "model"
    folder.mkdir()  # no weights: the refusal comes before any load
    if processor:
        (folder / "preprocessor_config.json").write_text("{}")
    client = TransformersClient(str(folder))
    planner = Planner(client, registry=fakes.registry(), cache=False, see_image=True)
    with pytest.raises(ConfigError) as info:
        planner.plan("gqa", "How many dogs?", images={"IMAGE": solid((1, 2, 3))})
    message = str(info.value)
    assert message.startswith(f"planner: the local model '{folder}' cannot see images (")
    why = "it has an image processor, but local planning runs text-only causal LMs" if processor else "no image"
    assert why in message
    assert "turn off see_image (--see-image, [llm] see_image) or plan on a multimodal server (--base-url)" in message
    assert client._loaded is None


def test_the_command_line_and_the_config_file_turn_it_on(
    llm_server: ScriptedServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    photo = tmp_path / "astronaut.png"
    PILImage.fromarray(data.astronaut()).save(photo)
    monkeypatch.setenv("OPENAI_BASE_URL", llm_server.url)
    llm_server.script([GOOD, GOOD, GOOD])
    argv = ["ask", str(photo), "How many dogs?", "--plan-only", "--no-cache"]
    out, err = io.StringIO(), io.StringIO()
    assert main([*argv, "--see-image", "--see-image-side", "48"], out, err) == 0, err.getvalue()
    assert decoded(image_parts(llm_server.requests[0].body)[0]).size == (48, 48)
    config = tmp_path / "visprog.toml"
    config.write_text("[llm]\nsee_image = true\nsee_image_side = 40\n")
    assert main([*argv, "--config", str(config)], out, err) == 0, err.getvalue()
    assert decoded(image_parts(llm_server.requests[1].body)[0]).size == (40, 40)
    assert main([*argv, "--config", str(config), "--no-see-image"], out, err) == 0, err.getvalue()
    assert not image_parts(llm_server.requests[2].body)


@pytest.mark.parametrize(
    ("table", "flags", "message"),
    [
        ('see_image = "yes"', [], "[llm]: see_image (--see-image, [llm] see_image) must be true or false, got 'yes'"),
        ("see_image_side = 0", [], "[llm]: see_image_side (--see-image-side, [llm] see_image_side) must be"),
        ("", ["--see-image-side", "4"], "planner: see_image_side (--see-image-side, [llm] see_image_side) must be"),
    ],
)
def test_bad_values_on_the_command_line_or_in_the_config_file(
    tmp_path: Path, table: str, flags: list[str], message: str
) -> None:
    config = tmp_path / "visprog.toml"
    config.write_text(f'[llm]\nbase_url = "http://127.0.0.1:9/v1"\n{table}\n')
    out, err = io.StringIO(), io.StringIO()
    argv = ["ask", "photo.png", "How many dogs?", "--plan-only", "--config", str(config), *flags]
    assert main(argv, out, err) == 1
    assert message in err.getvalue()
    if table:
        assert f"config file {config}" in err.getvalue()
