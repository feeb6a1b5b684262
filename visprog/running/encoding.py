"""Values of a run as JSON-ready data and back: the value encoding of a trace's data.

:meth:`Trace.to_dict <visprog.running.tracing.Trace.to_dict>` writes every value
with a :class:`ValueWriter` and :meth:`Trace.from_dict
<visprog.running.tracing.Trace.from_dict>` reads them with a :class:`ValueReader`.
The encoding (images as PNG, masks as COCO-style run lengths, each image,
Objects value and mask stored once in a table) is described in
:mod:`visprog.running.tracing`.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
import sys
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from PIL import Image as PILImage

from visprog.errors import EvalError, TraceFormatError
from visprog.language.expr import parse_template
from visprog.language.values import Detection, Objects, Template

if TYPE_CHECKING:  # numpy is imported where masks and arrays are written or read
    import numpy as np

__all__ = [
    "JPEG_QUALITY",
    "ImageFormat",
    "OpaqueValue",
    "ValueReader",
    "ValueWriter",
    "mask_to_rle",
    "rle_to_mask",
]

#: How images are written: ``png`` (every pixel kept) or ``jpeg`` (smaller, not exact).
ImageFormat = Literal["png", "jpeg"]
#: JPEG quality of images written with ``image_format="jpeg"``.
JPEG_QUALITY = 90
#: Image modes that PNG stores exactly; other modes are written as their raw pixel bytes.
_PNG_MODES = frozenset({"1", "L", "LA", "P", "RGB", "RGBA", "I;16"})


@dataclass(frozen=True)
class OpaqueValue:
    """A value a trace could only describe: read back from data, it shows as it did (its ``repr``)."""

    type_name: str
    text: str

    def __repr__(self) -> str:
        return self.text


# --- writing and reading values -------------------------------------------------------------


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def mask_to_rle(mask: np.ndarray) -> dict[str, Any]:
    """A boolean (height, width) mask as COCO's uncompressed RLE: ``{"size": [h, w], "counts": [...]}``.

    ``counts`` are the lengths of alternating runs of false and true pixels, starting with false,
    the pixels read column by column.
    """
    import numpy as np

    h, w = mask.shape
    flat = np.asarray(mask, dtype=bool).ravel(order="F")
    if flat.size == 0:
        return {"size": [h, w], "counts": []}
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate(([0], changes, [flat.size]))
    counts = np.diff(bounds).tolist()
    if flat[0]:
        counts.insert(0, 0)
    return {"size": [h, w], "counts": counts}


def rle_to_mask(rle: Mapping[str, Any]) -> np.ndarray:
    """The boolean (height, width) mask of :func:`mask_to_rle`'s encoding; ``ValueError`` if it does not fit."""
    import numpy as np

    size, counts = rle.get("size"), rle.get("counts")
    if not (isinstance(size, list) and len(size) == 2 and all(type(v) is int and v >= 0 for v in size)):
        raise ValueError(f"'size' must be [height, width], got {size!r}")
    if not (isinstance(counts, list) and all(type(v) is int and v >= 0 for v in counts)):
        raise ValueError("'counts' must be a list of run lengths (whole numbers, at least 0)")
    h, w = size
    if sum(counts) != h * w:
        raise ValueError(f"the runs cover {sum(counts)} pixels, the mask has {h}x{w} = {h * w}")
    values = np.arange(len(counts)) % 2 == 1
    flat = np.repeat(values, counts)
    return flat.reshape((h, w), order="F")


class ValueWriter:
    """Turns values into JSON-ready data, keeping each image, Objects value and mask once.

    After writing, :attr:`images`, :attr:`objects` and :attr:`masks` are the tables the data refers to.
    """

    def __init__(self, image_format: ImageFormat) -> None:
        self.image_format = image_format
        self.images: list[dict[str, Any]] = []
        self.objects: list[list[dict[str, Any]]] = []
        self.masks: list[dict[str, Any]] = []
        self._refs: dict[tuple[str, int], int] = {}
        self._kept: list[Any] = []  # what the refs' ids belong to, alive while writing

    def _ref(self, table: str, value: Any, entries: list[Any], write: Callable[[Any], Any]) -> int:
        key = (table, id(value))
        if key not in self._refs:
            self._kept.append(value)
            entries.append(None)  # the place is taken first: an entry may refer to others
            self._refs[key] = len(entries) - 1
            entries[self._refs[key]] = write(value)
        return self._refs[key]

    def value(self, value: Any) -> Any:
        if value is None or isinstance(value, (str, bool, int)):
            return value
        if isinstance(value, float):
            return value if math.isfinite(value) else {"type": "float", "value": str(value)}
        if isinstance(value, PILImage.Image):
            return {"type": "image", "ref": self._ref("image", value, self.images, self.image)}
        if isinstance(value, list):
            if isinstance(value, Objects) or (value and all(isinstance(v, Detection) for v in value)):
                ref = self._ref("objects", value, self.objects, lambda objs: [self.detection(d) for d in objs])
                return {"type": "objects", "ref": ref}
            return [self.value(v) for v in value]
        if isinstance(value, Detection):
            return {"type": "detection", **self.detection(value)}
        if isinstance(value, Template):
            return {
                "type": "template",
                "text": value.text,
                "bindings": {name: self.value(v) for name, v in value.bindings.items()},
            }
        if isinstance(value, tuple):
            return {"type": "tuple", "items": [self.value(v) for v in value]}
        if isinstance(value, dict):
            return {"type": "dict", "items": [[self.value(k), self.value(v)] for k, v in value.items()]}
        if isinstance(value, OpaqueValue):
            return {"type": "other", "class": value.type_name, "repr": value.text}
        numpy = _numpy_value(value)
        if numpy is not None:
            return numpy if isinstance(numpy, dict) else self.value(numpy)
        cls = type(value)
        return {"type": "other", "class": f"{cls.__module__}.{cls.__qualname__}", "repr": _repr(value)}

    def detection(self, d: Detection) -> dict[str, Any]:
        mask = None if d.mask is None else self._ref("mask", d.mask, self.masks, mask_to_rle)
        return {"box": list(d.box), "score": d.score, "label": d.label, "mask": mask}

    def image(self, image: PILImage.Image) -> dict[str, Any]:
        out: dict[str, Any] = {"mode": image.mode, "size": list(image.size)}
        buf = io.BytesIO()
        if self.image_format == "jpeg" and image.mode in ("RGB", "L"):
            image.save(buf, format="JPEG", quality=JPEG_QUALITY)
            out["format"] = "jpeg"
        elif image.mode in _PNG_MODES:
            image.save(buf, format="PNG")
            out["format"] = "png"
        else:
            buf.write(zlib.compress(image.tobytes()))
            out["format"] = "raw"
        out["data"] = _b64(buf.getvalue())
        return out


def _repr(value: Any) -> str:
    try:
        return repr(value)
    except Exception as e:  # a broken __repr__ must not lose the trace
        return f"<{type(value).__name__} (repr failed: {type(e).__name__})>"


def _numpy_value(value: Any) -> Any:
    """A numpy scalar's Python value, a numpy array's data, or ``None`` for anything else.

    numpy is looked up, not imported: a value can only be a numpy one if numpy was imported.
    """
    np = sys.modules.get("numpy")
    if np is None:
        return None
    if isinstance(value, np.generic) and not isinstance(value, np.object_):
        return value.item()
    if isinstance(value, np.ndarray) and value.dtype.kind in "biufc":
        array = np.ascontiguousarray(value)
        return {
            "type": "array",
            "dtype": array.dtype.str,
            "shape": list(array.shape),
            "data": _b64(zlib.compress(array.tobytes())),
        }
    return None


_FLOATS = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


class ValueReader:
    """Turns data back into values; ``data`` holds the tables. Each image, Objects value and mask is read once.

    Data that cannot be read raises :class:`~visprog.errors.TraceFormatError` naming where (``where``).
    """

    def __init__(self, data: Mapping[str, Any]) -> None:
        self.tables: dict[str, list[Any]] = {}
        for name in ("images", "objects", "masks"):
            table = data.get(name, [])
            if not isinstance(table, list):
                raise TraceFormatError(f"{name}: expected a list, got {type(table).__name__}")
            self.tables[name] = table
        self._read: dict[tuple[str, int], Any] = {}

    @staticmethod
    def field(data: Mapping[str, Any], name: str, kind: type | tuple[type, ...], where: str) -> Any:
        path = f"{where}.{name}" if where else name
        if name not in data:
            raise TraceFormatError(f"{path}: missing")
        value = data[name]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            names = " or ".join("null" if k is type(None) else k.__name__ for k in kinds)
            raise TraceFormatError(f"{path}: expected {names}, got {json.dumps(value)[:60]}")
        return value

    def _entry(self, table: str, ref: Any, where: str, read: Callable[[Any, str], Any]) -> Any:
        entries = self.tables[table]
        if type(ref) is not int or not 0 <= ref < len(entries):
            raise TraceFormatError(f"{where}: {ref!r} is not a position in '{table}' ({len(entries)} entries)")
        key = (table, ref)
        if key not in self._read:
            self._read[key] = read(entries[ref], f"{table}[{ref}]")
        return self._read[key]

    def value(self, data: Any, where: str) -> Any:
        if data is None or isinstance(data, (str, bool, int, float)):
            return data
        if isinstance(data, list):
            return [self.value(v, f"{where}[{k}]") for k, v in enumerate(data)]
        if not isinstance(data, Mapping):
            raise TraceFormatError(f"{where}: not a value: {data!r}")
        kind = data.get("type")
        try:
            if kind == "image":
                return self._entry("images", data.get("ref"), where, self.image)
            if kind == "objects":
                return self._entry("objects", data.get("ref"), where, self.objects)
            if kind == "detection":
                return self.detection(data, where)
            if kind == "template":
                bindings = self.field(data, "bindings", dict, where)
                values = {name: self.value(v, f"{where}.bindings.{name}") for name, v in bindings.items()}
                return parse_template(self.field(data, "text", str, where)).bind(values)
            if kind == "float":
                return _FLOATS[data["value"]]
            if kind == "tuple":
                return tuple(self.value(v, f"{where}.items[{k}]") for k, v in enumerate(data["items"]))
            if kind == "dict":
                return {
                    self.value(k, f"{where}.items[{n}][0]"): self.value(v, f"{where}.items[{n}][1]")
                    for n, (k, v) in enumerate(data["items"])
                }
            if kind == "array":
                return _array(data)
            if kind == "other":
                return OpaqueValue(str(data["class"]), str(data["repr"]))
        except TraceFormatError:
            raise
        except (KeyError, TypeError, ValueError, EvalError, binascii.Error, zlib.error, OSError) as e:
            raise TraceFormatError(f"{where}: a {kind} that cannot be read: {type(e).__name__}: {e}") from None
        raise TraceFormatError(f"{where}: unknown value type {kind!r}")

    def objects(self, data: Any, where: str) -> Objects:
        if not isinstance(data, list):
            raise TraceFormatError(f"{where}: expected a list of detections, got {type(data).__name__}")
        return Objects([self.detection(d, f"{where}[{k}]") for k, d in enumerate(data)])

    def detection(self, data: Any, where: str) -> Detection:
        if not isinstance(data, Mapping):
            raise TraceFormatError(f"{where}: expected a detection, got {type(data).__name__}")
        ref = data.get("mask")
        mask = None if ref is None else self._entry("masks", ref, f"{where}.mask", self.mask)
        try:
            return Detection(tuple(data["box"]), float(data["score"]), str(data["label"]), mask)
        except (KeyError, TypeError, ValueError) as e:
            raise TraceFormatError(f"{where}: not a detection: {type(e).__name__}: {e}") from None

    @staticmethod
    def mask(data: Any, where: str) -> np.ndarray:
        try:
            return rle_to_mask(data)
        except (AttributeError, ValueError) as e:
            raise TraceFormatError(f"{where}: not a mask: {e}") from None

    @staticmethod
    def image(data: Any, where: str) -> PILImage.Image:
        try:
            mode, size, fmt = data["mode"], tuple(data["size"]), data["format"]
            raw = base64.b64decode(data["data"], validate=True)
            if fmt == "raw":
                image = PILImage.frombytes(mode, size, zlib.decompress(raw))
            elif fmt in ("png", "jpeg"):
                with PILImage.open(io.BytesIO(raw), formats=[fmt.upper()]) as opened:
                    opened.load()
                    image = opened.copy()
            else:
                raise ValueError(f"unknown image format {fmt!r}")
        except (KeyError, TypeError, ValueError, binascii.Error, zlib.error, OSError) as e:
            raise TraceFormatError(f"{where}: not an image: {type(e).__name__}: {e}") from None
        if (image.mode, image.size) != (mode, size):
            raise TraceFormatError(
                f"{where}: the image is {image.mode} {image.width}x{image.height}, its entry says {mode} {size}"
            )
        return image


def _array(data: Mapping[str, Any]) -> np.ndarray:
    import numpy as np

    dtype = np.dtype(data["dtype"])
    if dtype.kind not in "biufc":
        raise ValueError(f"arrays of dtype {dtype} are not read")
    raw = zlib.decompress(base64.b64decode(data["data"], validate=True))
    return np.frombuffer(raw, dtype=dtype).reshape(tuple(data["shape"])).copy()
