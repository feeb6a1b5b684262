"""Module options: declared once (name, type, default, help), checked against that wherever they are given."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

import visprog
from visprog.errors import ConfigError, RegistrationError
from visprog.language.options import Option, OptionError
from visprog.language.signatures import ModuleSpec, Registry, module
from visprog.language.values import Image
from visprog.running.plugins import default_registry
from visprog.running.runtime import Context

MODULES = Path(__file__).resolve().parents[3] / "modules"


def _thing(**kwargs: Any) -> ModuleSpec:
    def Thing(image: Image, ctx: Context) -> Image:
        """Do a thing.

        Args:
            image: the image.
        """
        return image

    return module(**kwargs)(Thing)


THING_OPTIONS = [
    Option("size", int, 8, "the block size"),
    Option("strength", float, 0.5, "how strong"),
    Option("smooth", bool, False, "smooth the edges"),
    Option("style", str, "plain", "the style", choices=("plain", "fancy")),
    Option("labels", list[str], None, "labels to keep"),
    Option("threshold", float, None, "the score needed", backend_defaults={"fast": 0.2, "slow": 0.4}),
]


@pytest.fixture
def thing() -> ModuleSpec:
    return _thing(backends={"fast": "org/fast", "slow": None}, options=THING_OPTIONS)


# --- converting values ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "value", "expected"),
    [
        (int, 3, 3),
        (int, "12", 12),
        (int, 4.0, 4),
        (int, " 7 ", 7),
        (float, 1, 1.0),
        (float, "0.25", 0.25),
        (float, 2.5, 2.5),
        (bool, True, True),
        (bool, "false", False),
        (bool, "yes", True),
        (bool, "0", False),
        (bool, "on", True),
        (str, "a photo of {}.", "a photo of {}."),
        (str, Path("/models/x"), str(Path("/models/x"))),
        (list[str], ["sky", 3], ["sky", "3"]),
        (list[str], "sky, tree,", ["sky", "tree"]),
        (list[str], 5, ["5"]),
    ],
)
def test_values_are_converted_to_the_declared_type(kind: Any, value: Any, expected: Any) -> None:
    converted = Option("x", kind).convert(value)
    assert converted == expected and type(converted) is type(expected)


@pytest.mark.parametrize(
    ("kind", "value", "message"),
    [
        (int, 2.5, "must be a whole number (int), got 2.5"),
        (int, "big", "must be a whole number (int), got 'big'"),
        (int, True, "must be a whole number (int), got True"),
        (float, "high", "must be a number (float), got 'high'"),
        (float, False, "must be a number (float), got False"),
        (bool, "sometimes", "must be true or false (bool), got 'sometimes'"),
        (bool, 1, "must be true or false (bool), got 1"),
        (str, 3, "must be a string (str), got 3"),
        (list[str], {"a": 1}, "must be a list of strings (or one comma-separated string) (list[str]), got {'a': 1}"),
    ],
)
def test_values_that_do_not_fit_say_what_they_must_be(kind: Any, value: Any, message: str) -> None:
    with pytest.raises(ValueError) as info:
        Option("x", kind).convert(value)
    assert str(info.value) == message


def test_choices() -> None:
    style = Option("style", str, "plain", choices=("plain", "fancy"))
    assert style.convert("fancy") == "fancy"
    with pytest.raises(ValueError, match=r"^must be one of plain, fancy, got 'odd'$"):
        style.convert("odd")


# --- declaring ---------------------------------------------------------------------------------


def test_a_module_with_backends_has_backend_and_model_options(thing: ModuleSpec) -> None:
    names = [o.name for o in thing.options]
    assert names == ["backend", "model", "size", "strength", "smooth", "style", "labels", "threshold"]
    backend, model = thing.option("backend"), thing.option("model")
    assert backend is not None and backend.default == "fast" and backend.choices == ("fast", "slow")
    assert model is not None and model.default is None and dict(model.backend_defaults) == {"fast": "org/fast"}
    assert thing.option("nope") is None
    # a module without backends or options has none
    assert _thing().options == ()
    # a declared backend or model option keeps its help; the rest is the standard one
    spec = _thing(backends={"a": None}, options=[Option("model", str, None, "the LLM's name")])
    assert [o.name for o in spec.options] == ["backend", "model"]
    assert spec.option("model").help == "the LLM's name"  # type: ignore[union-attr]


def test_default_text_and_type_names(thing: ModuleSpec) -> None:
    texts = {o.name: (o.type_name, o.default_text()) for o in thing.options}
    assert texts["size"] == ("int", "8")
    assert texts["labels"] == ("list[str]", "not set")
    assert texts["threshold"] == ("float", "0.2 for fast, 0.4 for slow")
    assert texts["model"] == ("str", "'org/fast' for fast")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"options": [Option("size", int, "big")]},
            "option 'size': the default must be a whole number (int), got 'big'",
        ),
        ({"options": [Option("palette", dict)]}, "option 'palette': type <class 'dict'> is not one of bool, int"),
        ({"options": [Option("a", int), Option("a", float)]}, "option 'a' is declared twice"),
        ({"options": [Option("not-a-name", int)]}, "option name 'not-a-name' must be letters, digits and underscores"),
        ({"options": ["size"]}, "options= takes Option(name, type, default, help), got 'size'"),
        ({"options": Option("size", int)}, "options= takes a list of Option"),
        (
            {"options": [Option("t", float, None, backend_defaults={"gpu": 0.1})]},
            "option 't': backend_defaults names unknown backend(s) gpu",
        ),
        (
            {"options": [Option("t", float, None, backend_defaults={"a": "x"})], "backends": {"a": None}},
            "option 't': the default for backend 'a' must be a number (float), got 'x'",
        ),
        ({"options": [Option("model", int)], "backends": {"a": None}}, "option 'model' must be of type str"),
    ],
)
def test_declaration_errors_name_the_module_and_option(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(RegistrationError) as info:
        _thing(**kwargs)
    assert "module 'Thing'" in str(info.value)
    assert message in str(info.value)


def test_options_need_a_context_parameter() -> None:
    def Plain(image: Image) -> Image:
        """Plain.

        Args:
            image: the image.
        """
        return image

    with pytest.raises(RegistrationError, match="a module with options needs a parameter annotated Context"):
        module(options=[Option("size", int, 8)])(Plain)


# --- checking settings against the registry ----------------------------------------------------


def test_settings_are_converted_and_filed_under_the_canonical_name(thing: ModuleSpec) -> None:
    registry = Registry()
    registry.register(thing)
    settings = {
        "thing": {"size": "16", "smooth": "yes", "labels": "a,b", "strength": None},
        "THING": {"style": "fancy"},
    }
    assert registry.validate_options(settings, "here") == {
        "Thing": {"size": 16, "smooth": True, "labels": ["a", "b"], "style": "fancy"}
    }


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"Thnig": {"size": 1}}, "here: unknown module 'Thnig' (did you mean 'Thing'?)"),
        ({"Zzz": {}}, "here: unknown module 'Zzz'"),
        (
            {"Thing": {"sise": 1}},
            "here: Thing has no option 'sise' (did you mean 'size'?); its options: backend, model, size, strength,"
            " smooth, style, labels, threshold",
        ),
        ({"Thing": {"size": "big"}}, "here: Thing option 'size' must be a whole number (int), got 'big'"),
        ({"Thing": {"backend": "gpu"}}, "here: Thing has no backend 'gpu'; choose one of fast, slow"),
        ({"Thing": {"style": "odd"}}, "here: Thing option 'style' must be one of plain, fancy, got 'odd'"),
        ({"Thing": 3}, "here: the options of Thing must be a table of NAME = VALUE, got 3"),
    ],
)
def test_unknown_and_unfit_settings_are_errors_naming_where(
    thing: ModuleSpec, settings: dict[str, Any], message: str
) -> None:
    registry = Registry()
    registry.register(thing)
    with pytest.raises(OptionError) as info:
        registry.validate_options(settings, "here")
    assert str(info.value) == message
    assert isinstance(info.value, ConfigError) and isinstance(info.value, ValueError)


def test_a_module_without_options() -> None:
    registry = default_registry()
    with pytest.raises(OptionError, match=r"^x: Crop has no options \(it was given 'size'\)$"):
        registry.validate_options({"Crop": {"size": 3}}, "x")


# --- the built-in modules declare every option they read ----------------------------------------

_READS = re.compile(r"""(?:ctx\.option|_option)\(\s*(?:ctx,\s*)?["'](\w+)["']""")
_RAW_READS = re.compile(r"""(?:ctx\.)?options(?:\.get\(|\[)\s*["'](\w+)["']""")


@pytest.mark.parametrize("family", sorted(p.stem for p in MODULES.glob("*.py") if not p.stem.startswith("_")))
def test_builtin_modules_declare_every_option_they_read(family: str) -> None:
    source = (MODULES / f"{family}.py").read_text(encoding="utf-8")
    read = set(_READS.findall(source)) | set(_RAW_READS.findall(source))
    # a file of backends declares no module: the options it reads are those of the modules that import it
    owners = {family} | {
        p.stem for p in MODULES.glob("*.py") if re.search(rf"from \.{family} import", p.read_text(encoding="utf-8"))
    }
    declared = {
        o.name
        for spec in default_registry()
        if spec.fn.__module__ in {f"visprog.modules.{owner}" for owner in owners}
        for o in spec.options
    }
    assert read <= declared, f"{family} reads undeclared options {sorted(read - declared)}"


def test_the_documented_options_are_declared() -> None:
    registry = default_registry()
    expected = {
        "Loc": {"backend", "model", "box_threshold", "text_threshold", "nms_iou"},
        "FaceDet": {"backend", "model", "score_threshold", "nms_threshold", "top_k", "min_size", "min_neighbors"},
        "Seg": {"points_per_side", "points_per_batch", "pred_iou_thresh", "mask_threshold", "label_ids_to_fuse"},
        "Select": {"prompt", "batch_size"},
        "Classify": {"prompt", "batch_size"},
        "Vqa": {"max_new_tokens"},
        "Replace": {"num_inference_steps", "guidance_scale", "seed", "size", "dilate", "safety_checker", "progress"},
        "List": {"model", "base_url", "api_key", "timeout", "max_retries", "temperature"},
    }
    for name, options in expected.items():
        assert options <= {o.name for o in registry[name].options}, name
    loc = registry["Loc"].option("box_threshold")
    assert loc is not None
    assert dict(loc.backend_defaults) == {"grounding-dino": 0.3, "owlv2": 0.1, "groundingdino": 0.35}
    assert all(o.help for spec in registry for o in spec.options)


def test_option_is_exported() -> None:
    assert visprog.Option is Option
