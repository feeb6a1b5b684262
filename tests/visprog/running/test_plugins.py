"""Third-party plugins discovered through the ``visprog.modules`` entry points, and the registry itself.

The plugin tests build a real (pip-less) distribution in ``tmp_path``: a package
plus a ``*.dist-info`` folder with ``METADATA`` and ``entry_points.txt``, so
``importlib.metadata`` finds it exactly as it finds an installed wheel.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image as PILImage
from skimage import data

import visprog
from tests.fakes import check
from visprog.errors import RegistrationError
from visprog.language.signatures import Registry, module, normalize
from visprog.language.values import Image, Objects, Type
from visprog.running.interpreter import Interpreter
from visprog.running.plugins import ENTRY_POINT_GROUP, PLUGINS_ENV, PluginError, load_plugins, plugins_enabled
from visprog.running.runtime import Context

BUILTINS = {
    "Crop",
    "CropLeftOf",
    "CropRightOf",
    "CropAbove",
    "CropBelow",
    "Count",
    "Eval",
    "Result",
    "ColorPop",
    "BgBlur",
    "Emoji",
    "Tag",
    "FaceDet",
}

DEMO_PLUGIN = '''\
"""A third-party plugin: two pixel modules."""

from __future__ import annotations

import numpy as np
from PIL import Image as PILImage

import visprog
from visprog import Image


@visprog.module(aliases=["INVERT"])
def Invert(image: Image) -> Image:
    """Invert every colour channel (255 - value).

    Args:
        image: the image to invert.
    """
    return PILImage.fromarray(255 - np.asarray(image.convert("RGB")))


@visprog.module
def Brightness(image: Image, factor: float = 1.5) -> Image:
    """Scale every pixel value by a factor, clipped to 0..255.

    Args:
        image: the image to brighten.
        factor: how much to multiply each value by;
            values above 1 brighten, below 1 darken.
    """
    arr = np.asarray(image.convert("RGB")).astype(np.float64) * factor
    return PILImage.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8))
'''


def make_distribution(root: Path, package: str, source: str, entry_points: dict[str, str] | None = None) -> str:
    """Write package ``package`` (its ``__init__.py`` is ``source``) and its dist-info under ``root``.

    Returns the distribution's name (``package`` with dashes).
    """
    dist = package.replace("_", "-")
    pkg = root / package
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(source, encoding="utf-8")
    info = root / f"{package}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n", encoding="utf-8")
    eps = entry_points or {"demo": package}
    lines = "".join(f"{name} = {value}\n" for name, value in eps.items())
    (info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\n{lines}", encoding="utf-8")
    return dist


@pytest.fixture
def on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """``tmp_path`` on ``sys.path``; every module imported from it is forgotten afterwards."""
    before = set(sys.modules)
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    yield tmp_path
    for name in set(sys.modules) - before:
        mod = sys.modules.get(name)
        if str(tmp_path) in str(getattr(mod, "__file__", "") or ""):
            del sys.modules[name]
    importlib.invalidate_caches()


@pytest.fixture
def demo_plugin(on_path: Path) -> str:
    return make_distribution(on_path, "visprog_plugin_demo", DEMO_PLUGIN)


@pytest.fixture(scope="module")
def astronaut() -> PILImage.Image:
    return PILImage.fromarray(data.astronaut())


# --- a real plugin, found through entry points -------------------------------------------


def test_load_entry_points_registers_builtins_and_the_plugin(demo_plugin: str) -> None:
    registry = Registry()
    loaded = load_plugins(registry)
    assert {"logic", "image_ops", "faces", "demo"} <= set(loaded)
    assert BUILTINS <= set(registry.names())
    assert {"Invert", "Brightness"} <= set(registry.names())
    invert = registry["Invert"]
    assert "plugin 'demo'" in invert.source and demo_plugin in invert.source
    assert invert.summary == "Invert every colour channel (255 - value)."
    assert invert.signature() == "Invert(image: Image) -> Image"
    assert registry["Brightness"].signature() == "Brightness(image: Image, factor: float = 1.5) -> Image"
    assert registry["Brightness"].param("factor").description == (  # type: ignore[union-attr]
        "how much to multiply each value by; values above 1 brighten, below 1 darken."
    )
    # built-ins keep their own source
    assert "plugin 'image_ops' of visprog" == registry["Crop"].source


def test_load_entry_points_is_idempotent(demo_plugin: str) -> None:
    registry = Registry()
    first = load_plugins(registry)
    names, specs = registry.names(), {s.name: s for s in registry}
    assert "demo" in first
    assert load_plugins(registry) == []
    assert registry.names() == names
    assert all(registry[name] is spec for name, spec in specs.items())
    # a copy remembers what it loaded too
    assert load_plugins(registry.copy()) == []


def test_plugin_program_checks_and_runs_with_correct_pixels(demo_plugin: str, astronaut: PILImage.Image) -> None:
    registry = Registry()
    load_plugins(registry)
    program = textwrap.dedent(
        """\
        A=Invert(image=IMAGE)
        B=INVERT(image=A)
        C=invert(image=IMAGE)
        D=Brightness(image=IMAGE)
        E=brightness(image=IMAGE, factor=0.5)
        N=Count(box=[])
        FINAL_RESULT=Result(var=A)
        """
    )
    checked = check(program, registry=registry)
    assert [s.spec.name for s in checked.steps if s.spec] == [
        "Invert",
        "Invert",
        "Invert",
        "Brightness",
        "Brightness",
        "Count",
        "Result",
    ]
    assert checked.steps[0].type is Type.IMAGE
    assert checked.steps[3].type is Type.IMAGE
    trace = Interpreter(registry).run(program, {"IMAGE": astronaut})
    original = np.asarray(astronaut)
    values = trace.values
    np.testing.assert_array_equal(np.asarray(values["A"]), 255 - original)
    np.testing.assert_array_equal(np.asarray(values["B"]), original)
    np.testing.assert_array_equal(np.asarray(values["C"]), 255 - original)
    expected_d = np.clip(np.rint(original * 1.5), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(np.asarray(values["D"]), expected_d)
    np.testing.assert_array_equal(np.asarray(values["E"]), np.rint(original * 0.5).astype(np.uint8))
    np.testing.assert_array_equal(np.asarray(trace.result), 255 - original)
    assert values["N"] == 0
    assert trace.step("A").module == "Invert"
    # the input image is not modified
    np.testing.assert_array_equal(np.asarray(astronaut), data.astronaut())


def test_visprog_modules_subprocess_lists_the_plugin(demo_plugin: str, on_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(on_path)}
    proc = subprocess.run(
        [sys.executable, "-m", "visprog", "modules", "--json"],
        capture_output=True,
        text=True,
        env=env,
        cwd=on_path,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    by_name = {m["name"]: m for m in json.loads(proc.stdout)}
    assert BUILTINS <= set(by_name)
    assert by_name["Invert"]["aliases"] == ["INVERT"]
    assert by_name["Invert"]["source"] == f"plugin 'demo' of {demo_plugin}"
    assert [p["name"] for p in by_name["Brightness"]["params"]] == ["image", "factor"]
    assert by_name["Brightness"]["params"][1] == {
        "name": "factor",
        "type": "float",
        "required": False,
        "description": "how much to multiply each value by; values above 1 brighten, below 1 darken.",
    }
    text = subprocess.run(
        [sys.executable, "-m", "visprog", "modules"], capture_output=True, text=True, env=env, cwd=on_path, timeout=120
    )
    assert text.returncode == 0, text.stderr
    assert "Invert(image: Image) -> Image" in text.stdout
    assert f"from plugin 'demo' of {demo_plugin}" in text.stdout


# --- broken plugins: reported, and the rest of visprog keeps working --------------------------

BAD_PLUGINS = {
    "missing_hint": (
        '''
        @visprog.module
        def Blur(image: Image, radius) -> Image:
            """Blur.

            Args:
                image: the image.
                radius: how much.
            """
            return image
        ''',
        ["Blur", "radius", "no type hint"],
    ),
    "unsupported_type": (
        '''
        @visprog.module
        def Paint(image: Image, palette: dict) -> Image:
            """Paint.

            Args:
                image: the image.
                palette: colours.
            """
            return image
        ''',
        ["Paint", "palette", "unsupported type"],
    ),
    "undocumented_param": (
        '''
        @visprog.module
        def Sharpen(image: Image, amount: float = 1.0) -> Image:
            """Sharpen.

            Args:
                image: the image.
            """
            return image
        ''',
        ["Sharpen", "amount", "Args:"],
    ),
    "bad_option_default": (
        '''
        @visprog.module(options=[visprog.Option("size", int, "big", "the block size")])
        def Pixelate(image: Image, ctx: visprog.Context) -> Image:
            """Pixelate.

            Args:
                image: the image.
            """
            return image
        ''',
        ["Pixelate", "option 'size'", "the default must be a whole number (int), got 'big'"],
    ),
    "bad_option_type": (
        '''
        @visprog.module(options=[visprog.Option("palette", dict, None, "colours")])
        def Posterize(image: Image, ctx: visprog.Context) -> Image:
            """Posterize.

            Args:
                image: the image.
            """
            return image
        ''',
        ["Posterize", "option 'palette'", "is not one of bool, int, float, str, list[str]"],
    ),
}


def _broken(registry: Registry) -> PluginError:
    """The one plugin error of ``registry``."""
    assert len(registry.plugin_errors) == 1, registry.plugin_errors
    error = registry.plugin_errors[0]
    assert isinstance(error, PluginError)
    return error


@pytest.mark.parametrize("case", sorted(BAD_PLUGINS))
def test_bad_plugin_is_reported_naming_plugin_module_and_parameter(case: str, on_path: Path) -> None:
    body, expected = BAD_PLUGINS[case]
    package = f"visprog_plugin_{case}"
    source = "import visprog\nfrom visprog import Image, Objects\n" + textwrap.dedent(body)
    dist = make_distribution(on_path, package, source, {f"ep_{case}": package})
    registry = Registry()
    load_plugins(registry)  # no error: the built-ins load, the broken plugin is recorded
    assert BUILTINS <= set(registry.names())
    error = _broken(registry)
    message = str(error)
    assert f"plugin 'ep_{case}' of {dist}" in message
    for part in expected:
        assert part in message, message
    assert "Traceback" not in message
    assert error.entry_point == f"ep_{case} = {package}" and error.distribution == dist
    # strict: the same error, raised (a plugin author's check)
    with pytest.raises(PluginError) as info:
        load_plugins(Registry(), strict=True)
    assert str(info.value) == message


CLASHES = {
    "Count": (
        '''
        @visprog.module
        def Count(box: Objects) -> int:
            """Count again.

            Args:
                box: the objects.
            """
            return 0
        ''',
        "Count",
        "Count",
        "image_ops",
    ),
    "CROP": (
        '''
        @visprog.module(aliases=["CROP"])
        def MyCrop(image: Image, box: Objects) -> Image:
            """Crop differently.

            Args:
                image: the image.
                box: the objects.
            """
            return image
        ''',
        "MyCrop",
        "CROP",
        "image_ops",
    ),
}


def _clash_plugin(root: Path, case: str) -> str:
    body = CLASHES[case][0]
    package = f"visprog_plugin_clash_{case.lower()}"
    source = "import visprog\nfrom visprog import Image, Objects\n" + textwrap.dedent(body)
    return make_distribution(root, package, source, {"clash": package})


@pytest.mark.parametrize("case", sorted(CLASHES))
def test_plugin_clashing_with_a_builtin_name_is_refused(case: str, on_path: Path) -> None:
    _, plugin_module, _, _ = CLASHES[case]
    dist = _clash_plugin(on_path, case)
    registry = Registry()
    load_plugins(registry)
    message = str(_broken(registry))
    assert f"plugin 'clash' of {dist}" in message
    assert f"module '{plugin_module}'" in message
    assert "is already taken by module" in message
    assert plugin_module not in registry or registry[plugin_module].source != f"plugin 'clash' of {dist}"


@pytest.mark.parametrize("case", sorted(CLASHES))
def test_plugin_earlier_on_sys_path_does_not_shadow_a_builtin(case: str, on_path: Path) -> None:
    _, plugin_module, name, builtin_family = CLASHES[case]
    dist = _clash_plugin(on_path, case)
    registry = Registry()
    load_plugins(registry)
    message = str(_broken(registry))
    builtin = "Crop" if case == "CROP" else "Count"
    assert message.startswith(f"module '{plugin_module}' (from plugin 'clash' of {dist}): name '{name}'")
    assert f"is already taken by module '{builtin}' (from plugin '{builtin_family}' of visprog)" in message
    assert registry.get(name) is not None and registry[name].source == f"plugin '{builtin_family}' of visprog"


def test_clash_with_a_builtin_is_reported_against_the_plugin(on_path: Path) -> None:
    """With built-ins already loaded, the plugin (not the built-in) is the one refused."""
    registry = Registry()
    load_plugins(registry)  # built-ins only: the plugin is not on the path yet
    body = CLASHES["CROP"][0]
    package = "visprog_plugin_clash_late"
    make_distribution(on_path, package, "import visprog\nfrom visprog import Image, Objects\n" + textwrap.dedent(body))
    importlib.invalidate_caches()
    assert load_plugins(registry) == []
    message = str(_broken(registry))
    assert "module 'MyCrop' (from plugin 'demo' of visprog-plugin-clash-late)" in message
    assert "name 'CROP' is already taken by module 'Crop' (from plugin 'image_ops' of visprog)" in message
    assert registry["CROP"].name == "Crop"
    assert "MyCrop" not in registry


def test_plugin_whose_import_fails_names_the_entry_point(on_path: Path) -> None:
    package = "visprog_plugin_broken"
    dist = make_distribution(on_path, package, "import visprog_no_such_dependency_xyz\n", {"broken_ep": package})
    registry = Registry()
    load_plugins(registry)
    message = str(_broken(registry))
    assert f"plugin 'broken_ep' of {dist}" in message
    assert f"cannot import {package}" in message
    assert "ModuleNotFoundError" in message and "visprog_no_such_dependency_xyz" in message


def test_plugin_raising_at_import_leaves_the_other_plugins_working(
    on_path: Path, demo_plugin: str, astronaut: PILImage.Image
) -> None:
    package = "visprog_plugin_raises"
    source = "raise RuntimeError('this plugin needs a licence key')\n"
    dist = make_distribution(on_path, package, source, {"raises": package})
    registry = Registry()
    loaded = load_plugins(registry)
    assert "demo" in loaded and "raises" not in loaded
    error = _broken(registry)
    assert str(error) == (
        f"plugin 'raises' of {dist}: cannot import {package}: RuntimeError: this plugin needs a licence key"
    )
    assert error.entry_point == f"raises = {package}"
    assert isinstance(error.__cause__, RuntimeError)  # the plugin's own exception
    # the built-ins and the good plugin work
    trace = Interpreter(registry).run(
        "A=Invert(image=IMAGE)\nN=Count(box=[])\nFINAL_RESULT=Result(var=A)", {"IMAGE": astronaut}
    )
    np.testing.assert_array_equal(np.asarray(trace.result), 255 - np.asarray(astronaut))
    # loading again neither retries nor repeats the report
    assert load_plugins(registry) == [] and len(registry.plugin_errors) == 1
    assert registry.copy().plugin_errors == registry.plugin_errors


def test_entry_point_naming_a_missing_module(on_path: Path) -> None:
    make_distribution(on_path, "visprog_plugin_typo", "", {"typo": "visprog_plugin_typo.nothing_here"})
    registry = Registry()
    load_plugins(registry)
    assert re.match(r"plugin 'typo' of visprog-plugin-typo: cannot import", str(_broken(registry)))


def test_plugin_that_declares_nothing(on_path: Path) -> None:
    make_distribution(on_path, "visprog_plugin_empty", "X = 1\n", {"empty": "visprog_plugin_empty"})
    registry = Registry()
    load_plugins(registry)
    assert re.match(r"plugin 'empty' of visprog-plugin-empty: .*declares no modules", str(_broken(registry)))


def test_entry_point_naming_a_single_spec(on_path: Path) -> None:
    make_distribution(on_path, "visprog_plugin_single", DEMO_PLUGIN, {"one": "visprog_plugin_single:Invert"})
    registry = Registry()
    assert "one" in load_plugins(registry)
    assert "Invert" in registry and "Brightness" not in registry
    assert registry["invert"].source == "plugin 'one' of visprog-plugin-single"


def test_a_broken_builtin_is_an_error_naming_a_broken_installation(tmp_path: Path) -> None:
    """Entry points of the visprog distribution itself are built-ins: one that fails stops loading."""
    info = tmp_path / "elsewhere" / "visprog-0.0.dist-info"  # not on sys.path: only its entry points are read
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: visprog\nVersion: 0.0\n", encoding="utf-8")
    (info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\ngone = visprog.modules.no_such_family\n")
    entry_points = importlib.metadata.PathDistribution(info).entry_points
    with pytest.raises(RegistrationError) as err:
        load_plugins(Registry(), entry_points)
    message = str(err.value)
    assert message.startswith("the built-in modules of plugin 'gone' of visprog cannot be loaded")
    assert (
        "installation is broken (reinstall it)" in message and "cannot import visprog.modules.no_such_family" in message
    )
    assert not isinstance(err.value, PluginError)


def test_visprog_plugins_0_loads_the_builtins_only(demo_plugin: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PLUGINS_ENV, "0")
    assert not plugins_enabled()
    registry = Registry()
    loaded = load_plugins(registry)
    assert BUILTINS <= set(registry.names()) and "Invert" not in registry
    assert "demo" not in loaded and registry.plugin_errors == []
    # turned on again (or asked for), the plugin loads into the same registry
    assert load_plugins(registry, third_party=True) == ["demo"]
    assert "Invert" in registry
    monkeypatch.setenv(PLUGINS_ENV, "1")
    assert plugins_enabled()


def _visprog(args: list[str], root: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != PLUGINS_ENV}
    environ.update(PYTHONPATH=str(root), **env)
    return subprocess.run(
        [sys.executable, "-m", "visprog", *args], capture_output=True, text=True, env=environ, cwd=root, timeout=120
    )


def test_visprog_check_works_with_a_broken_plugin_installed(on_path: Path, demo_plugin: str) -> None:
    package = "visprog_plugin_broken_cli"
    dist = make_distribution(on_path, package, "import visprog_no_such_dependency_xyz\n", {"broken_cli": package})
    program = "A=Invert(image=IMAGE)\nN=Count(box=[])\nFINAL_RESULT=Result(var=A)"
    proc = _visprog(["check", program], on_path)
    assert proc.returncode == 0, proc.stderr
    assert "ok, 3 steps" in proc.stdout
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1, proc.stderr  # once
    assert f"plugin 'broken_cli' of {dist}: cannot import {package}: ModuleNotFoundError" in warnings[0]
    assert "VISPROG_PLUGINS=0 turns plugins off" in warnings[0]
    # visprog modules lists the good modules, and the broken plugin with its error
    listing = _visprog(["modules"], on_path)
    assert listing.returncode == 0, listing.stderr
    assert "Invert(image: Image) -> Image" in listing.stdout
    assert f"not loaded: plugin 'broken_cli' of {dist}: cannot import {package}" in listing.stdout
    # VISPROG_PLUGINS=0: no warning, no plugin modules
    off = _visprog(["check", "N=Count(box=[])\nFINAL_RESULT=Result(var=N)"], on_path, VISPROG_PLUGINS="0")
    assert off.returncode == 0 and "warning" not in off.stderr, off.stderr
    assert (
        "third-party plugins are off (VISPROG_PLUGINS=0)" in _visprog(["modules"], on_path, VISPROG_PLUGINS="0").stdout
    )


# --- the registry: names, suggestions, signatures, docstrings --------------------------------


def _declare(name: str, aliases: tuple[str, ...] = ()) -> visprog.ModuleSpec:
    def fn(image: Image, question: str) -> str:
        """Answer a question.

        Args:
            image: the image.
            question: the question.
        """
        return "yes"

    return module(name=name, aliases=aliases)(fn)


def test_name_normalisation() -> None:
    assert normalize("V_Q_A") == normalize("Vqa") == normalize("VQA") == "vqa"
    registry = Registry()
    spec = registry.register(_declare("Vqa", ("VQA",)))
    for spelling in ["VQA", "Vqa", "vqa", "V_Q_A", "v_qa"]:
        assert registry.get(spelling) is spec
        assert spelling in registry
    assert registry.get("VQAX") is None
    assert 42 not in registry
    with pytest.raises(KeyError, match="unknown module 'Vqx'"):
        registry["Vqx"]


def test_builtin_aliases_resolve_in_every_spelling() -> None:
    registry = Registry()
    load_plugins(registry)
    for spelling in ["CROP_RIGHTOF", "CropRightOf", "croprightof", "Crop_Right_Of"]:
        assert registry[spelling].name == "CropRightOf"
    for spelling in ["CROP", "CROP_BEHIND", "crop_infrontof"]:
        assert registry[spelling].name == "Crop"
    assert registry["face_det"].name == "FaceDet"


def test_registering_a_clashing_name_is_refused() -> None:
    registry = Registry()
    registry.register(_declare("Vqa", ("VQA",)), source="first")
    with pytest.raises(RegistrationError, match=r"module 'V_QA' \(from second\): name 'V_QA' is already taken by"):
        registry.register(_declare("V_QA"), source="second")
    with pytest.raises(RegistrationError, match=r"declare it with @visprog\.module"):
        registry.register(lambda: None)  # type: ignore[arg-type]
    # the same spec twice is fine
    spec = registry.get("vqa")
    assert spec is not None
    registry.register(spec)
    assert len(registry) == 1


def test_suggest() -> None:
    registry = Registry()
    load_plugins(registry)
    assert registry.suggest("Cropp") == "Crop"
    assert registry.suggest("FaceDett") == "FaceDet"
    assert registry.suggest("COLOR_POPP") == "ColorPop"
    assert registry.suggest("crop_right_off") == "CropRightOf"
    assert registry.suggest("Zzzzzzzz") is None
    with pytest.raises(KeyError, match=r"did you mean 'Emoji'\?"):
        registry["Emojii"]


def test_signature_text_and_context_parameter() -> None:
    def Find(image: Image, ctx: Context, query: str, limit: int = 3, category: str | None = None) -> Objects:
        """Find things.

        Args:
            image: the image.
            query: what to find.
            limit: at most this many.
            category: only this category.
        """
        return []

    spec = module(Find)
    assert [p.name for p in spec.params] == ["image", "query", "limit", "category"]
    assert spec.context_param == "ctx"
    assert spec.signature() == (
        "Find(image: Image, query: str, limit: int = 3, category: str | None = None) -> Objects"
    )
    assert spec.param("ctx") is None
    assert spec.param("limit").required is False  # type: ignore[union-attr]
    assert spec.param("image").required is True  # type: ignore[union-attr]
    registry = Registry()
    load_plugins(registry)
    facedet = registry["FaceDet"]
    assert [p.name for p in facedet.params] == ["image"]
    assert facedet.context_param == "ctx"
    assert facedet.signature() == "FaceDet(image: Image) -> Objects"
    assert registry["Emoji"].signature() == "Emoji(image: Image, object: Objects, emoji: str) -> Image"
    assert registry["Eval"].signature() == "Eval(expr: expression) -> any"


def test_batch_must_be_callable() -> None:
    def Thing(image: Image) -> Image:
        """Do a thing.

        Args:
            image: the image.
        """
        return image

    with pytest.raises(RegistrationError, match=r"module 'Thing' .*batch= must be a callable"):
        module(batch=42)(Thing)  # type: ignore[arg-type]

    def batch(calls: list[dict[str, Any]], ctx: Context) -> list[Any]:
        return [c["image"] for c in calls]

    assert module(batch=batch)(Thing).batch is batch


def test_docstring_parsing() -> None:
    def Describe(image: Image, style: str = "short", words: int = 10) -> str:
        """Describe the image in words.

        This summary's second paragraph is only in the description.

        Args:
            image: the image to describe; a long description
                that goes on over
                three lines.
            style (str): 'short' or 'long'.
            words: at most this many words.

        Returns:
            the description, one
            sentence.
        """
        return ""

    spec = module(Describe)
    assert spec.summary == "Describe the image in words."
    assert "second paragraph" in spec.description and "Args" not in spec.description
    assert spec.param("image").description == (  # type: ignore[union-attr]
        "the image to describe; a long description that goes on over three lines."
    )
    assert spec.param("style").description == "'short' or 'long'."  # type: ignore[union-attr]
    assert spec.param("words").description == "at most this many words."  # type: ignore[union-attr]
    assert spec.returns_description == "the description, one sentence."
    registry = Registry()
    load_plugins(registry)
    expr = registry["Eval"].param("expr")
    assert expr is not None
    assert "\n" not in expr.description
    assert expr.description.startswith("an expression over earlier variables written as {NAME}, e.g.")
    assert expr.description.endswith("the text methods lower/upper/strip/title/startswith/endswith/replace/split.")


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("def F(image: Image) -> Image:\n    return image\n", "needs a docstring"),
        (
            'def F(image: Image):\n    """F.\n\n    Args:\n        image: x.\n    """\n',
            "the return type has no type hint",
        ),
        (
            'def F(image: Image, *rest: str) -> Image:\n    """F.\n\n    Args:\n        image: x.\n    """\n',
            "parameter 'rest': *args and **kwargs are not allowed",
        ),
        (
            'def F(image: Image, /) -> Image:\n    """F.\n\n    Args:\n        image: x.\n    """\n',
            "parameter 'image' must be usable as a keyword",
        ),
        (
            'def F(image: Image) -> Image:\n    """F.\n\n    Args:\n        image: x.\n        size: y.\n    """\n',
            "describes unknown parameter(s) size",
        ),
        (
            'def F(image: Image) -> set:\n    """F.\n\n    Args:\n        image: x.\n    """\n',
            "return type: unsupported type",
        ),
    ],
)
def test_declaration_errors(source: str, expected: str) -> None:
    namespace: dict[str, Any] = {"Image": Image}
    exec(source, namespace)
    with pytest.raises(RegistrationError) as info:
        module(namespace["F"])
    assert "module 'F'" in str(info.value)
    assert expected in str(info.value)


def test_invalid_module_name() -> None:
    with pytest.raises(RegistrationError, match="letters, digits and underscores"):
        module(name="not-a-name")(_declare("X").fn)


VALIDATING_PLUGIN = '''\
"""A plugin whose module checks its literal arguments and names the spellings it is meant by."""

from __future__ import annotations

import visprog
from visprog import Image


def _level(value: int) -> str | None:
    return None if 1 <= value <= 9 else f"must be from 1 to 9, got {value}"


@visprog.module(validate={"level": _level}, suggest_for=["SHARPEN_IMAGE", "UNBLUR"])
def Sharpen(image: Image, level: int = 2) -> Image:
    """Sharpen the image.

    Args:
        image: the image to sharpen.
        level: how much, from 1 to 9.
    """
    return image
'''


def test_plugin_validators_and_suggestions_are_used_by_the_checker(on_path: Path) -> None:
    make_distribution(on_path, "visprog_plugin_sharpen", VALIDATING_PLUGIN)
    registry = Registry()
    load_plugins(registry)
    check("A=Sharpen(image=IMAGE, level=9)\nFINAL_RESULT=Result(var=A)", registry=registry)
    with pytest.raises(visprog.ProgramCheckError) as info:
        check("A=Sharpen(image=IMAGE, level=12)\nB=UNBLUR(image=A)\nFINAL_RESULT=Result(var=B)", registry=registry)
    assert [(d.line, d.column, d.message) for d in info.value.diagnostics] == [
        (1, 30, "argument 'level' of Sharpen: must be from 1 to 9, got 12"),
        (2, 3, "unknown module 'UNBLUR' (did you mean 'Sharpen'?)"),
    ]
    assert registry.get("UNBLUR") is None
