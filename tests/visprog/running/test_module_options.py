"""Module options where they are given (the config file, ``--option``, ``Runtime``) and where modules read them."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image as PILImage

from visprog.apps.cli import main
from visprog.errors import ConfigError
from visprog.language.options import Option, OptionError
from visprog.language.signatures import ModuleSpec, Registry, module
from visprog.language.values import Image
from visprog.running.interpreter import Interpreter
from visprog.running.plugins import default_registry
from visprog.running.runtime import Context, RunCache, Runtime


def cli(*argv: str | Path) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main([str(a) for a in argv], out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def _blocks() -> ModuleSpec:
    @module(
        backends={"fine": None, "coarse": None},
        options=[
            Option("size", int, 8, "the side of a block"),
            Option("scale", float, None, "a factor", backend_defaults={"fine": 1.0, "coarse": 4.0}),
        ],
    )
    def Blocks(image: Image, ctx: Context) -> int:
        """How many blocks fit across the image.

        Args:
            image: the image.
        """
        return int(image.size[0] // (ctx.option("size") * ctx.option("scale")))

    return Blocks


@pytest.fixture
def registry() -> Registry:
    reg = default_registry().copy()
    reg.register(_blocks())
    return reg


# --- Runtime ------------------------------------------------------------------------------------


def test_runtime_modules_are_checked_and_converted() -> None:
    runtime = Runtime(modules={"loc": {"nms_iou": "0.3", "backend": "owlv2"}, "FACE_DET": {"min_size": 30.0}})
    assert runtime.modules == {"Loc": {"nms_iou": 0.3, "backend": "owlv2"}, "FaceDet": {"min_size": 30}}
    assert runtime.options("Loc") == {"nms_iou": 0.3, "backend": "owlv2"}


@pytest.mark.parametrize(
    ("modules", "message"),
    [
        (
            {"Loc": {"nms_iuo": 0.3}},
            "Runtime(modules=...): Loc has no option 'nms_iuo' (did you mean 'nms_iou'?); "
            "its options: backend, model, box_threshold, text_threshold, nms_iou, config, text_encoder, image_size",
        ),
        ({"Lco": {"nms_iou": 0.3}}, "Runtime(modules=...): unknown module 'Lco' (did you mean 'Loc'?)"),
        (
            {"Loc": {"nms_iou": "high"}},
            "Runtime(modules=...): Loc option 'nms_iou' must be a number (float), got 'high'",
        ),
        ({"Vqa": {"backend": "gpt"}}, "Runtime(modules=...): Vqa has no backend 'gpt'; choose one of blip, vlm"),
    ],
)
def test_runtime_refuses_unknown_and_unfit_options(modules: dict[str, Any], message: str) -> None:
    with pytest.raises(OptionError) as info:
        Runtime(modules=modules)
    assert str(info.value) == message


def test_set_option_checks_and_none_unsets() -> None:
    runtime = Runtime()
    runtime.set_option("seg", "points_per_batch", "16")
    assert runtime.options("Seg") == {"points_per_batch": 16}
    with pytest.raises(OptionError, match=r"^Runtime\.set_option: Seg option 'points_per_batch' must be a whole"):
        runtime.set_option("Seg", "points_per_batch", 2.5)
    with pytest.raises(OptionError, match=r"^--somewhere: Seg has no option 'point_per_batch' \(did you mean"):
        runtime.set_option("Seg", "point_per_batch", 2, source="--somewhere")
    runtime.set_option("Seg", "points_per_batch", None)
    assert runtime.options("Seg") == {}


def test_a_runtime_checks_against_its_own_registry(registry: Registry) -> None:
    with pytest.raises(OptionError, match="unknown module 'Blocks'"):
        Runtime(modules={"Blocks": {"size": 2}})  # not a module of the default registry
    runtime = Runtime(registry=registry, modules={"blocks": {"size": "2"}})
    assert runtime.modules == {"Blocks": {"size": 2}}
    with pytest.raises(OptionError, match="Blocks option 'size' must be a whole number"):
        Runtime(registry=registry, modules={"Blocks": {"size": "two"}})


# --- the config file ----------------------------------------------------------------------------


def test_a_misspelt_option_in_the_config_file_is_an_error_naming_the_file(tmp_path: Path) -> None:
    config = tmp_path / "visprog.toml"
    config.write_text("[modules.Loc]\nnms_iuo = 0.3\n")
    with pytest.raises(OptionError) as info:
        Runtime.from_config(config)
    assert str(info.value).startswith(f"config file {config}: Loc has no option 'nms_iuo' (did you mean 'nms_iou'?)")


def test_config_file_options_are_converted(tmp_path: Path, registry: Registry) -> None:
    config = tmp_path / "visprog.toml"
    config.write_text(
        'device = "cpu"\n[modules.loc]\nnms_iou = 1\nbackend = "owlv2"\n[modules.Seg]\nlabel_ids_to_fuse = ["sky", 3]\n'
    )
    runtime = Runtime.from_config(config)
    assert runtime.modules == {"Loc": {"nms_iou": 1.0, "backend": "owlv2"}, "Seg": {"label_ids_to_fuse": ["sky", "3"]}}
    config.write_text("[modules.Blocks]\nsize = 3\n")
    assert Runtime.from_config(config, registry=registry).modules == {"Blocks": {"size": 3}}
    config.write_text("half = 'no'\n")
    with pytest.raises(ConfigError, match="half must be true or false, got 'no'"):
        Runtime.from_config(config)
    config.write_text('[modules.Replace]\nsafety_checker = "maybe"\n')
    with pytest.raises(OptionError, match=r"Replace option 'safety_checker' must be true or false \(bool\)"):
        Runtime.from_config(config)


# --- where modules read them ---------------------------------------------------------------------


def test_context_option_gives_the_value_set_else_the_backend_default_else_the_default(registry: Registry) -> None:
    spec = registry["Blocks"]
    runtime = Runtime(registry=registry, modules={"Blocks": {"size": 4}})
    ctx = Context(runtime, RunCache()).for_module(spec)
    assert ctx.option("size") == 4 and ctx.option("scale") == 1.0
    runtime.set_option("Blocks", "backend", "coarse")
    assert ctx.option("scale") == 4.0
    runtime.set_option("Blocks", "scale", "0.5")
    assert ctx.option("scale") == 0.5
    with pytest.raises(OptionError, match=r"Blocks declares no option 'sise' \(declare it in @module"):
        ctx.option("sise")
    # by name: the declaration is found in the runtime's registry
    assert Context(runtime, RunCache()).for_module("Blocks", spec.backends, spec.default_backend).option("size") == 4


def test_the_interpreter_hands_modules_their_options(registry: Registry) -> None:
    image = PILImage.new("RGB", (64, 8))
    program = "N=Blocks(image=IMAGE)\nFINAL_RESULT=Result(var=N)"
    assert Interpreter(registry, Runtime(registry=registry)).run(program, {"IMAGE": image}).result == 8
    runtime = Runtime(registry=registry, modules={"Blocks": {"size": "4", "backend": "coarse"}})
    assert Interpreter(registry, runtime).run(program, {"IMAGE": image}).result == 4  # 64 // (4 * 4.0)


# --- the command line ---------------------------------------------------------------------------


def test_option_flag_sets_a_module_option(monkeypatch: pytest.MonkeyPatch) -> None:
    import visprog.apps.webapp

    seen: dict[str, Any] = {}
    monkeypatch.setattr(visprog.apps.webapp, "serve", lambda host, port, **kwargs: seen.update(kwargs))
    argv = ["serve", "--backend", "FaceDet=cascade", "--option", "facedet.min_neighbors=2", "--option", "Loc.nms_iou=1"]
    code, _out, err = cli(*argv)
    assert code == 0, err
    runtime = seen["runtime"]
    assert runtime.options("FaceDet") == {"backend": "cascade", "min_neighbors": 2}
    assert runtime.options("Loc") == {"nms_iou": 1.0}


@pytest.fixture
def photo(tmp_path: Path) -> Path:
    path = tmp_path / "photo.png"
    PILImage.new("RGB", (16, 16)).save(path)
    return path


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (
            "Loc.nms_iuo=0.3",
            "error: --option Loc.nms_iuo=0.3: Loc has no option 'nms_iuo' (did you mean 'nms_iou'?)",
        ),
        (
            "Loc.nms_iou=high",
            "error: --option Loc.nms_iou=high: Loc option 'nms_iou' must be a number (float), got 'high'",
        ),
        ("Lo.nms_iou=0.3", "error: --option Lo.nms_iou=0.3: unknown module 'Lo' (did you mean 'Loc'?)"),
        ("Loc=0.3", "error: --option expects MODULE.NAME=VALUE (e.g. Loc.nms_iou=0.3), got 'Loc=0.3'"),
        ("Loc.nms_iou", "error: --option expects MODULE.NAME=VALUE"),
    ],
)
def test_option_flag_errors_are_usage_errors(photo: Path, option: str, message: str) -> None:
    code, out, err = cli("exec", "RESULT=IMAGE", "--image", photo, "--option", option)
    assert code == 2 and out == ""
    assert err.startswith(message), err


def test_model_flag_for_a_module_without_models(photo: Path) -> None:
    code, _out, err = cli("exec", "RESULT=IMAGE", "--image", photo, "--model", "Crop=org/x")
    assert code == 2 and "--model: Crop has no options (it was given 'model')" in err


def test_config_file_errors_name_the_file(photo: Path, tmp_path: Path) -> None:
    config = tmp_path / "visprog.toml"
    config.write_text("[modules.FaceDet]\nmin_neighbours = 2\n")
    code, _out, err = cli("exec", "RESULT=IMAGE", "--image", photo, "--config", config)
    assert code == 1
    assert f"config file {config}: FaceDet has no option 'min_neighbours' (did you mean 'min_neighbors'?)" in err


def test_visprog_modules_shows_each_modules_options() -> None:
    code, out, _err = cli("modules")
    assert code == 0
    loc = out[out.index("Loc(image: Image, object: str) -> Objects") :].split("\n\n", 1)[0]
    assert "    options (--option Loc.NAME=VALUE, or [modules.Loc] in the config file):" in loc
    assert "      backend: str = 'grounding-dino', one of grounding-dino, owlv2, groundingdino; " in loc
    assert (
        "      box_threshold: float = 0.3 for grounding-dino, 0.1 for owlv2, 0.35 for groundingdino; "
        "the score a box needs" in loc
    )
    assert "      nms_iou: float = 0.5; boxes overlapping a better one" in loc
    crop = out[out.index("Crop(image: Image, box: Objects) -> Image") :].split("\n\n", 1)[0]
    assert "options" not in crop
    code, out, _err = cli("modules", "--json")
    by_name = {m["name"]: m for m in json.loads(out)}
    nms = next(o for o in by_name["Loc"]["options"] if o["name"] == "nms_iou")
    assert nms == {
        "name": "nms_iou",
        "type": "float",
        "default": 0.5,
        "backend_defaults": {},
        "choices": [],
        "help": "boxes overlapping a better one by more than this IoU are dropped (1.0 keeps all)",
    }
    assert by_name["Crop"]["options"] == []


def test_from_config_refuses_an_unknown_override() -> None:
    with pytest.raises(ConfigError, match=r"unknown override\(s\) 'devic' \(did you mean 'device_request'\?\)"):
        Runtime.from_config(None, devic="cuda")


def test_unsetting_an_unknown_option_is_an_error_too() -> None:
    runtime = Runtime(device_request="cpu")
    with pytest.raises(OptionError, match=r"Loc has no option 'nms_iuo' \(did you mean 'nms_iou'\?\)"):
        runtime.set_option("Loc", "nms_iuo", None)


def test_a_misspelt_llm_setting_in_the_config_file_is_refused_by_every_command(tmp_path: Path) -> None:
    config = tmp_path / "visprog.toml"
    config.write_text('[llm]\nmodle = "qwen2.5:7b"\n')
    image = tmp_path / "a.png"
    PILImage.new("RGB", (8, 8)).save(image)
    program = tmp_path / "p.vp"
    program.write_text("A=Invert(image=IMAGE)\nR=Result(var=A)\n")
    code, _, err = cli("exec", program, "--image", f"IMAGE={image}", "--config", config, "-q")
    assert code != 0
    assert f"config file {config}: [llm] has no setting 'modle' (did you mean 'model'?)" in err
