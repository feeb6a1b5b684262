"""Modules from plain Python files: :func:`load_plugin_files`, :func:`plugin_path` and a config file's
``plugins = [...]`` (:meth:`Runtime.from_config`, :func:`config_plugins`), each into a registry of the test's own."""

from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path

import pytest

from visprog.errors import ConfigError
from visprog.language.signatures import Registry
from visprog.running.plugins import PluginError, load_plugin_files, plugin_path
from visprog.running.runtime import Runtime, config_plugins

SOURCE = textwrap.dedent(
    '''\
    from dataclasses import dataclass

    import visprog
    from visprog import Context, Option


    @dataclass
    class Settings:  # a dataclass needs its module in sys.modules while the file runs
        times: int = 2


    @visprog.module(options=[Option("times", int, Settings().times, help="how often")])
    def Repeat(text: str, ctx: Context) -> str:
        """The text, repeated.

        Args:
            text: what to repeat.
        """
        return text * ctx.option("times")
    '''
)


def write(folder: Path, name: str, text: str = SOURCE) -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def test_a_file_is_imported_under_a_name_of_its_own_and_registered_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, "repeat.py")
    registry = Registry()
    assert load_plugin_files(registry, [path]) == [path]
    spec = registry["Repeat"]
    assert spec.source == f"plugin file {path}" and spec.summary == "The text, repeated."
    module = sys.modules[spec.fn.__module__]
    assert module.__file__ == str(path) and spec.fn.__module__.startswith("visprog_plugin_repeat_")

    monkeypatch.chdir(tmp_path)  # the same file by another spelling is the same file
    assert load_plugin_files(registry, ["repeat.py", tmp_path / "." / "repeat.py"]) == []
    assert registry.names() == ["Repeat"]

    other = tmp_path / "other"
    other.mkdir()
    copy = write(other, "repeat.py")  # the same stem in another folder: another module, whose name is taken
    with pytest.raises(PluginError, match=r"name 'Repeat' is already taken by module 'Repeat' \(from plugin file"):
        load_plugin_files(registry, [copy])
    assert [m for m in list(sys.modules.values()) if getattr(m, "__file__", None) == str(copy)] == []


def test_the_errors_name_the_file_and_where_the_paths_came_from(tmp_path: Path) -> None:
    registry = Registry()
    with pytest.raises(PluginError, match=r"^plugin file .*gone\.py \(--plugin\): no such file$"):
        load_plugin_files(registry, [tmp_path / "gone.py"], source="--plugin")
    bad = write(tmp_path, "bad.py", "import visprog\n\n\n@visprog.module\ndef Nothing():\n    pass\n")
    with pytest.raises(PluginError) as caught:
        load_plugin_files(registry, [bad])
    message = str(caught.value)
    assert message.startswith(f"plugin file {bad}: RegistrationError: ")
    assert message.endswith(f", called from {bad}:4)")  # raised in visprog, by the decorator on line 4
    assert caught.value.__cause__ is not None and caught.value.__cause__.__traceback__ is not None
    assert caught.value.__cause__.__traceback__.tb_frame.f_code.co_filename == str(bad)  # the file's frames only
    assert len(registry) == 0


def test_the_plugin_path_lists_files_and_the_python_files_of_folders(tmp_path: Path) -> None:
    one = write(tmp_path, "one.py")
    folder = tmp_path / "many"
    folder.mkdir()
    b, a = write(folder, "b.py"), write(folder, "a.py")
    write(folder, "readme.txt", "not Python")
    (folder / "nested").mkdir()
    write(folder / "nested", "c.py")
    assert plugin_path(os.pathsep.join([str(one), "", str(folder)])) == [one, a, b]
    assert plugin_path("") == []
    with pytest.raises(PluginError, match=r"\$VISPROG_PLUGIN_PATH: no such file or folder: .*missing"):
        plugin_path(os.pathsep.join([str(one), str(tmp_path / "missing")]))


def test_the_config_files_plugins_load_before_its_module_tables(tmp_path: Path) -> None:
    (tmp_path / "conf").mkdir()
    write(tmp_path, "repeat.py")
    config = write(tmp_path / "conf", "visprog.toml", 'plugins = ["../repeat.py"]\n[modules.Repeat]\ntimes = "3"\n')
    registry = Registry()
    runtime = Runtime.from_config(config, registry=registry)
    assert runtime.options("Repeat") == {"times": 3}  # the plugin's declared type
    assert "Repeat" in registry and config_plugins(config, registry) == []  # loaded once

    fresh = Registry()
    assert config_plugins(config, fresh) == [tmp_path / "conf" / ".." / "repeat.py"]
    assert "Repeat" in fresh


def test_the_config_files_plugins_must_be_a_list_of_files(tmp_path: Path) -> None:
    for value in ('"repeat.py"', "[1]", '[""]'):
        config = write(tmp_path, "visprog.toml", f"plugins = {value}\n")
        with pytest.raises(ConfigError, match="plugins must be a list of Python files"):
            Runtime.from_config(config, registry=Registry())
    config = write(tmp_path, "visprog.toml", 'plugins = ["nowhere.py"]\n')
    with pytest.raises(PluginError, match=r"nowhere\.py \(config file .*visprog\.toml: plugins\): no such file"):
        config_plugins(config, Registry())
    config = write(tmp_path, "visprog.toml", 'plugin = ["repeat.py"]\n')
    with pytest.raises(ConfigError, match=r"unknown key.*plugin; expected device, half, plugins"):
        Runtime.from_config(config, registry=Registry())
