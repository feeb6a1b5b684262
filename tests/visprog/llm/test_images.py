"""Images as a chat model sees them: downscaled RGB, JPEG data URLs, a digest of the pixels sent."""

from __future__ import annotations

import base64
import io
from typing import Any

import pytest
from PIL import Image as PILImage

from visprog.errors import ConfigError
from visprog.llm import flatten
from visprog.llm.clients import check_settings
from visprog.llm.images import (
    DEFAULT_SIDE,
    MIN_SIDE,
    check_see_image,
    check_side,
    downscale,
    has_images,
    image_part,
    pixels_digest,
)


def test_downscale_cuts_the_longer_side_keeps_the_shape_and_never_enlarges() -> None:
    assert downscale(PILImage.new("RGB", (1000, 250)), 200).size == (200, 50)
    assert downscale(PILImage.new("RGB", (250, 1000)), 200).size == (50, 200)
    small = PILImage.new("RGB", (30, 20), (1, 2, 3))
    out = downscale(small, DEFAULT_SIDE)
    assert out.size == (30, 20) and out is not small and out.getpixel((0, 0)) == (1, 2, 3)


def test_downscale_makes_rgb_of_any_mode_transparency_on_white() -> None:
    clear = PILImage.new("RGBA", (8, 8), (255, 0, 0, 0))
    assert downscale(clear, 64).mode == "RGB" and downscale(clear, 64).getpixel((0, 0)) == (255, 255, 255)
    assert downscale(PILImage.new("L", (8, 8), 7), 64).getpixel((3, 3)) == (7, 7, 7)
    with pytest.raises(TypeError, match="expected a PIL image, got str"):
        downscale("photo.png", 64)  # type: ignore[arg-type]


def test_an_image_part_is_a_jpeg_data_url_of_the_same_image() -> None:
    image = PILImage.new("RGB", (40, 24), (0, 200, 0))
    part = image_part(image)
    assert part["type"] == "image_url" and set(part) == {"type", "image_url"}
    prefix, _, payload = part["image_url"]["url"].partition(",")
    assert prefix == "data:image/jpeg;base64"
    back = PILImage.open(io.BytesIO(base64.b64decode(payload, validate=True)))
    assert back.format == "JPEG" and back.size == (40, 24)
    r, g, b = back.convert("RGB").getpixel((20, 12))  # type: ignore[misc]
    assert g > 180 and r < 30 and b < 30


def test_the_digest_follows_names_sizes_and_pixels() -> None:
    red, blue = PILImage.new("RGB", (4, 4), (255, 0, 0)), PILImage.new("RGB", (4, 4), (0, 0, 255))
    base = pixels_digest([("IMAGE", red)])
    assert base == pixels_digest([("IMAGE", red.copy())])
    assert (
        len(
            {
                base,
                pixels_digest([("IMAGE", blue)]),
                pixels_digest([("LEFT", red)]),
                pixels_digest([("IMAGE", PILImage.new("RGB", (2, 8), (255, 0, 0)))]),
                pixels_digest([("LEFT", red), ("RIGHT", blue)]),
                pixels_digest([("LEFT", blue), ("RIGHT", red)]),
            }
        )
        == 6
    )


def test_has_images_looks_for_parts_that_are_not_text() -> None:
    text_only: list[dict[str, Any]] = [
        {"role": "user", "content": "hi"},
        {"role": "user", "content": [{"type": "text", "text": "hi"}]},
    ]
    assert not has_images(text_only)
    picture = {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,AAAA"}}
    assert has_images([*text_only, {"role": "user", "content": [{"type": "text", "text": "x"}, picture]}])


def test_flatten_refuses_content_parts() -> None:
    with pytest.raises(ValueError, match=r"content parts \(images\) cannot be flattened"):
        flatten([{"role": "system", "content": "s"}, {"role": "user", "content": [{"type": "text", "text": "x"}]}])


def test_the_settings_are_checked() -> None:
    assert check_see_image(True) is True and check_side(MIN_SIDE) == MIN_SIDE
    with pytest.raises(ConfigError, match=r"^here: see_image \(--see-image, \[llm\] see_image\) must be true or"):
        check_see_image("true", "here")
    with pytest.raises(ConfigError, match=rf"at least {MIN_SIDE} .*got 15"):
        check_side(MIN_SIDE - 1)
    check_settings({"see_image": False, "see_image_side": 1024}, "config file c.toml")
    with pytest.raises(ConfigError, match=r"^config file c.toml: \[llm\]: see_image_side .* got '512'"):
        check_settings({"see_image_side": "512"}, "config file c.toml")
