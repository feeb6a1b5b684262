"""Tests for FaceDet: the scikit-image cascade on real photos, and the YuNet backend.

The real YuNet weights are not available offline. The ``yunet`` code path
(hub id or local file, OpenCV's ``FaceDetectorYN``, boxes, scores, masks,
thresholds) runs here on a tiny hand-made ONNX model with YuNet's outputs
(``cls_8`` ... ``kps_32``) that "detects" red squares: it is written byte by
byte in the ONNX protobuf format below, so the tests need no ``onnx`` package.
The real model is tested in the ``slow`` test.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import data
from visprog.modules import faces
from visprog.modules.faces import YUNET_FILE, YUNET_REPO, FaceDet, yunet_model_file

from visprog.errors import ModelUnavailableError, StepError
from visprog.language.signatures import Registry
from visprog.language.values import Detection
from visprog.running.hub import is_cached
from visprog.running.interpreter import Interpreter
from visprog.running.runtime import Context, RunCache, Runtime

#: the astronaut's face in the 512x512 photo (x0, y0, x1, y1), checked by hand
ASTRONAUT_FACE = (175, 65, 265, 165)

PROGRAM = "OBJ0=FaceDet(image=IMAGE)\nFINAL_RESULT=OBJ0"


def iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    x0, y0 = max(a[0], b[0]), max(a[1], b[1])
    x1, y1 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(x1 - x0, 0) * max(y1 - y0, 0)
    area = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / area


def photo(name: str) -> Image.Image:
    return Image.fromarray(getattr(data, name)()).convert("RGB")


def run_facedet(image: Image.Image, runtime: Runtime) -> list[Detection]:
    ctx = Context(runtime, RunCache(), "FaceDet", FaceDet.backends, FaceDet.default_backend)
    return FaceDet(image, ctx)


def check_detections(found: list[Detection], size: tuple[int, int]) -> None:
    """Typed output: labels, scores in [0, 1] best first, boxes inside the image, ellipse masks inside the boxes."""
    w, h = size
    assert [d.score for d in found] == sorted((d.score for d in found), reverse=True)
    for d in found:
        assert d.label == "face"
        assert 0.0 <= d.score <= 1.0
        x0, y0, x1, y1 = d.box
        assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
        assert d.mask is not None and d.mask.shape == (h, w) and d.mask.dtype == bool
        ys, xs = np.nonzero(d.mask)
        assert xs.min() >= x0 and xs.max() < x1 and ys.min() >= y0 and ys.max() < y1
        # an ellipse inscribed in the box covers pi/4 of it
        assert d.mask.sum() == pytest.approx(np.pi / 4 * (x1 - x0) * (y1 - y0), rel=0.08)
        cy, cx = round((y0 + y1) / 2), round((x0 + x1) / 2)
        assert d.mask[cy, cx] and not d.mask[int(y0), int(x0)]


# --- cascade ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def cascade() -> Runtime:
    return Runtime(modules={"FaceDet": {"backend": "cascade"}})


def test_cascade_finds_the_astronauts_face(cascade: Runtime) -> None:
    image = photo("astronaut")
    found = run_facedet(image, cascade)
    assert len(found) == 1
    assert iou(found[0].box, ASTRONAUT_FACE) > 0.3
    check_detections(found, image.size)


@pytest.mark.parametrize("name", ["coffee", "chelsea"])
def test_cascade_finds_no_face_in_photos_without_people(cascade: Runtime, name: str) -> None:
    assert run_facedet(photo(name), cascade) == []


def test_cascade_is_loaded_once_per_runtime() -> None:
    runtime = Runtime(modules={"FaceDet": {"backend": "cascade"}})
    image = photo("astronaut").resize((256, 256))
    first, second = run_facedet(image, runtime), run_facedet(image, runtime)
    assert [d.box for d in first] == [d.box for d in second]
    assert list(runtime.pool.loads.values()) == [1]


# --- yunet: backend, model resolution, missing weights ------------------------------


def test_yunet_is_the_default_backend() -> None:
    ctx = Context(Runtime(), RunCache(), "FaceDet", FaceDet.backends, FaceDet.default_backend)
    assert ctx.backend == "yunet"
    assert ctx.model_id == YUNET_REPO == "opencv/face_detection_yunet"
    assert FaceDet.backends == {"yunet": YUNET_REPO, "cascade": None}


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def registry() -> Registry:
    reg = Registry()
    reg.register(FaceDet)
    return reg


def test_missing_yunet_weights_name_the_module_model_and_fix(offline: None) -> None:
    runtime = Runtime(modules={"FaceDet": {"backend": "yunet", "model": "visprog-test/not-a-model"}})
    with pytest.raises(StepError) as info:
        Interpreter(registry(), runtime).run(PROGRAM, {"IMAGE": photo("astronaut")})
    e = info.value
    assert e.module == "FaceDet" and e.line == 1
    assert isinstance(e.cause, ModelUnavailableError)
    message = str(e)
    assert "'visprog-test/not-a-model' is not available" in message
    assert "HF_HUB_OFFLINE=1" in message
    assert "visprog models pull FaceDet" in message


@pytest.mark.skipif(is_cached(YUNET_REPO), reason="the real YuNet model is cached on this machine")
def test_default_yunet_model_missing_offline(offline: None) -> None:
    with pytest.raises(ModelUnavailableError) as info:
        run_facedet(photo("astronaut"), Runtime())
    assert info.value.module == "FaceDet"
    assert info.value.model_id == YUNET_REPO
    assert "visprog models pull FaceDet" in str(info.value)


def test_yunet_local_path_that_does_not_exist(tmp_path: Path) -> None:
    missing = str(tmp_path / "nowhere" / YUNET_FILE)
    runtime = Runtime(modules={"FaceDet": {"backend": "yunet", "model": missing}})
    with pytest.raises(StepError) as info:
        Interpreter(registry(), runtime).run(PROGRAM, {"IMAGE": photo("chelsea")})
    assert isinstance(info.value.cause, ModelUnavailableError)
    message = str(info.value)
    assert "FaceDet" in message and missing in message and "no such file or folder" in message
    assert "visprog models pull FaceDet" in message


def test_yunet_folder_without_a_model(tmp_path: Path) -> None:
    (tmp_path / "a.onnx").write_bytes(b"")
    (tmp_path / "b.onnx").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"a\.onnx, b\.onnx"):
        yunet_model_file(str(tmp_path))
    runtime = Runtime(modules={"FaceDet": {"backend": "yunet", "model": str(tmp_path)}})
    with pytest.raises(ModelUnavailableError, match="the folder has no usable model files"):
        run_facedet(photo("chelsea"), runtime)


def test_yunet_model_file_resolution(tmp_path: Path) -> None:
    (tmp_path / "other.onnx").write_bytes(b"x")
    assert yunet_model_file(str(tmp_path)) == str(tmp_path / "other.onnx")  # the only .onnx
    (tmp_path / YUNET_FILE).write_bytes(b"x")
    assert yunet_model_file(str(tmp_path)) == str(tmp_path / YUNET_FILE)  # the named one wins
    assert yunet_model_file(str(tmp_path / "other.onnx")) == str(tmp_path / "other.onnx")


# --- yunet on a tiny hand-made model ------------------------------------------------------
#
# ONNX files are protobuf messages; these helpers write the few fields a model
# needs (field numbers from onnx.proto). The model has YuNet's twelve outputs:
# for each stride s in (8, 16, 32), ``cls_s`` and ``obj_s`` (N x 1 probabilities),
# ``bbox_s`` (N x 4: centre offsets and log sizes in cells), ``kps_s`` (N x 10),
# for the N cells of the stride-s grid. Strides 8 and 16 never fire; at stride
# 32, a cell's probability is sigmoid(0.1 * (R - G - B) - 10) of its mean BGR
# pixel, and its box is the cell itself. So a pure red 32x32 square aligned with
# the grid is one face of score ~1; red 110 scores 0.73, red 100 scores 0.5.


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        out.append(low | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _int(field: int, value: int) -> bytes:
    return _varint(field << 3) + _varint(value)


def _bytes(field: int, value: bytes | str) -> bytes:
    raw = value.encode() if isinstance(value, str) else value
    return _varint(field << 3 | 2) + _varint(len(raw)) + raw


def _tensor(name: str, array: np.ndarray) -> bytes:  # TensorProto
    kind = {np.dtype(np.float32): 1, np.dtype(np.int64): 7}[array.dtype]
    dims = b"".join(_int(1, d) for d in array.shape)
    return dims + _int(2, kind) + _bytes(8, name) + _bytes(9, array.astype(array.dtype.newbyteorder("<")).tobytes())


def _ints(name: str, values: list[int]) -> bytes:  # AttributeProto of type INTS
    return _bytes(1, name) + b"".join(_int(8, v) for v in values) + _int(20, 7)


def _node(op: str, inputs: list[str], output: str, *attributes: bytes) -> bytes:  # NodeProto
    parts = [_bytes(1, i) for i in inputs] + [_bytes(2, output), _bytes(4, op)] + [_bytes(5, a) for a in attributes]
    return b"".join(parts)


def _value_info(name: str, dims: list[int | str]) -> bytes:  # ValueInfoProto of a float tensor
    shape = b"".join(_bytes(1, _int(1, d) if isinstance(d, int) else _bytes(2, d)) for d in dims)
    return _bytes(1, name) + _bytes(2, _bytes(1, _int(1, 1) + _bytes(2, shape)))


def tiny_yunet_onnx() -> bytes:
    nodes: list[bytes] = []
    weights = [_tensor(f"shape{c}", np.array([1, -1, c], np.int64)) for c in (1, 4, 10)]
    outputs: list[bytes] = []
    for head, channels in (("cls", 1), ("obj", 1), ("bbox", 4), ("kps", 10)):
        for s in (8, 16, 32):
            w = np.zeros((channels, 3, 1, 1), np.float32)
            if head in ("cls", "obj"):
                b = np.array([-10.0 if s == 32 else -30.0], np.float32)
                if s == 32:
                    w[0, :, 0, 0] = [-0.1, -0.1, 0.1]  # blue, green, red
            elif head == "bbox":
                b = np.array([0.5, 0.5, 0.0, 0.0], np.float32)  # centred in the cell, one cell wide and high
            else:
                b = np.full(10, 0.5, np.float32)
            name = f"{head}_{s}"
            weights += [_tensor(f"{name}_w", w), _tensor(f"{name}_b", b)]
            last = f"{name}_conv"
            nodes.append(_node("Conv", [f"pool{s}", f"{name}_w", f"{name}_b"], last))
            if head in ("cls", "obj"):
                nodes.append(_node("Sigmoid", [last], f"{name}_prob"))
                last = f"{name}_prob"
            nodes.append(_node("Transpose", [last], f"{name}_nhwc", _ints("perm", [0, 2, 3, 1])))
            nodes.append(_node("Reshape", [f"{name}_nhwc", f"shape{channels}"], name))
            outputs.append(_bytes(12, _value_info(name, [1, "cells", channels])))
    pools = [
        _node("AveragePool", ["input"], f"pool{s}", _ints("kernel_shape", [s, s]), _ints("strides", [s, s]))
        for s in (8, 16, 32)
    ]
    graph = (
        b"".join(_bytes(1, n) for n in pools + nodes)
        + _bytes(2, "tiny_yunet")
        + b"".join(_bytes(5, t) for t in weights)
        + _bytes(11, _value_info("input", [1, 3, "height", "width"]))
        + b"".join(outputs)
    )
    opset = _bytes(1, "") + _int(2, 13)
    return _int(1, 7) + _bytes(2, "visprog-tests") + _bytes(7, graph) + _bytes(8, opset)


def test_protobuf_helpers() -> None:
    assert _varint(0) == b"\x00" and _varint(300) == b"\xac\x02"
    assert _varint(-1) == b"\xff" * 9 + b"\x01"  # int64 -1, two's complement
    assert _int(1, 7) == b"\x08\x07" and _bytes(2, "ab") == b"\x12\x02ab"
    assert _tensor("t", np.array([1.0], np.float32)).endswith(_bytes(9, struct.pack("<f", 1.0)))


@pytest.fixture(scope="module")
def tiny_yunet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("yunet")
    (folder / YUNET_FILE).write_bytes(tiny_yunet_onnx())
    return folder


def red_squares() -> Image.Image:
    """A gray 300x200 image with three 32x32 squares on the stride-32 grid: pure red, red 110, red 100."""
    pixels = np.full((200, 300, 3), 128, np.uint8)
    pixels[64:96, 96:128] = (255, 0, 0)
    pixels[128:160, 192:224] = (110, 0, 0)
    pixels[0:32, 224:256] = (100, 0, 0)
    return Image.fromarray(pixels)


def test_yunet_boxes_scores_and_masks(tiny_yunet: Path) -> None:
    image = red_squares()
    runtime = Runtime(modules={"FaceDet": {"backend": "yunet", "model": str(tiny_yunet)}})
    found = run_facedet(image, runtime)
    assert [d.box for d in found] == [(96, 64, 128, 96), (192, 128, 224, 160)]
    assert found[0].score == pytest.approx(1.0, abs=1e-4)
    assert found[1].score == pytest.approx(1 / (1 + np.exp(-1.0)), abs=1e-3)  # sigmoid(0.1 * 110 - 10)
    check_detections(found, image.size)
    assert list(runtime.pool.loads.values()) == [1]


def test_yunet_options_and_local_file(tiny_yunet: Path) -> None:
    image = red_squares()
    options = {"backend": "yunet", "model": str(tiny_yunet / YUNET_FILE), "score_threshold": 0.4}
    found = run_facedet(image, Runtime(modules={"FaceDet": options}))
    assert [d.box for d in found] == [(96, 64, 128, 96), (192, 128, 224, 160), (224, 0, 256, 32)]
    assert found[2].score == pytest.approx(0.5, abs=1e-3)
    options["score_threshold"] = 0.99
    assert [d.box for d in run_facedet(image, Runtime(modules={"FaceDet": options}))] == [(96, 64, 128, 96)]
    options.update(score_threshold=0.4, top_k=1)
    assert [d.box for d in run_facedet(image, Runtime(modules={"FaceDet": options}))] == [(96, 64, 128, 96)]


def test_yunet_no_face_and_odd_sizes(tiny_yunet: Path) -> None:
    runtime = Runtime(modules={"FaceDet": {"backend": "yunet", "model": str(tiny_yunet)}})
    assert run_facedet(photo("camera"), runtime) == []  # a gray photo: nothing red
    # a square cut by the image border: the box is clipped to the image
    pixels = np.full((50, 70, 3), 128, np.uint8)
    pixels[32:50, 32:64] = (255, 0, 0)
    found = run_facedet(Image.fromarray(pixels).convert("L").convert("RGB"), runtime)
    assert found == []  # gray has no red
    found = run_facedet(Image.fromarray(pixels), runtime)
    assert [d.box for d in found] == [(32, 32, 64, 50)]
    check_detections(found, (70, 50))
    assert list(runtime.pool.loads.values()) == [1]  # one detector for every image size


def test_yunet_through_the_interpreter(tiny_yunet: Path) -> None:
    runtime = Runtime(modules={"FaceDet": {"backend": "yunet", "model": str(tiny_yunet)}})
    trace = Interpreter(registry(), runtime).run(PROGRAM, {"IMAGE": red_squares()})
    assert [d.box for d in trace.result] == [(96, 64, 128, 96), (192, 128, 224, 160)]


def test_import_does_not_load_cv2_or_torch() -> None:
    import subprocess
    import sys

    code = "import sys, visprog.modules.faces; print('cv2' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
    assert faces.BACKENDS.keys() == {"yunet", "cascade"}


# --- the real model -----------------------------------------------------------------------


@pytest.mark.slow
def test_real_yunet_finds_the_astronauts_face() -> None:
    image = photo("astronaut")
    found = run_facedet(image, Runtime(modules={"FaceDet": {"backend": "yunet"}}))
    assert len(found) == 1
    assert iou(found[0].box, ASTRONAUT_FACE) > 0.5
    assert found[0].score > 0.8
    check_detections(found, image.size)
    assert run_facedet(photo("chelsea"), Runtime(modules={"FaceDet": {"backend": "yunet"}})) == []
