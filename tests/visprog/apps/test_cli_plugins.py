"""Modules from plain Python files, run as real processes: ``--plugin FILE.py`` on every command, the config file's
``plugins = [...]``, ``$VISPROG_PLUGIN_PATH``; clear errors (exit 2) naming the file and line for a file that is
missing, does not parse, raises or takes a module's name; ``--traceback`` for the exception inside a step's module.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image as PILImage

from tests.llm_server import ScriptedServer, serve_scripted
from tests.servers import clean_llm_env, closed_port
from visprog.apps.cli import main
from visprog.running import plugins

PLUGIN = textwrap.dedent(
    '''\
    """Two modules of a plain Python file."""

    import visprog
    from visprog import Image


    @visprog.module
    def Shout(text: str) -> str:
        """The text in capitals, with an exclamation mark.

        Args:
            text: what to shout.
        """
        return text.upper() + "!"


    @visprog.module
    def Boom(image: Image) -> str:
        """Always fails, one call down.

        Args:
            image: any image.
        """
        return explode(image.width)


    def explode(width: int) -> str:
        raise ValueError(f"no luck with width {width}")
    '''
)
#: the line of PLUGIN that raises
RAISE_LINE = PLUGIN.splitlines().index('    raise ValueError(f"no luck with width {width}")') + 1
SHOUT = "X=Shout(text='hello')\nFINAL_RESULT=Result(var=X)\n"
BOOM = "X=Boom(image=IMAGE)\nFINAL_RESULT=Result(var=X)\n"


@pytest.fixture
def plugin(tmp_path: Path) -> Path:
    path = tmp_path / "my_modules.py"
    path.write_text(PLUGIN, encoding="utf-8")
    return path


@pytest.fixture
def small_image(tmp_path: Path) -> Path:
    path = tmp_path / "small.png"
    PILImage.new("RGB", (24, 16), "teal").save(path)
    return path


def visprog_run(*argv: str | Path, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """``python -m visprog ARGV`` with no plugin path, config file or colour settings but ``env``'s."""
    clean = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "VISPROG_PLUGIN_PATH", "VISPROG_CONFIG", "NO_COLOR", "FORCE_COLOR")
    }
    return subprocess.run(
        [sys.executable, "-m", "visprog", *map(str, argv)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**clean, "HOME": str(cwd), **env},
        timeout=120,
    )


def assert_usage_error(proc: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    line = proc.stderr.strip()
    assert line.startswith("error: plugin file ") and "\n" not in line, line
    for fragment in fragments:
        assert fragment in line


# --- where the files come from --------------------------------------------------------------------------------------


def test_exec_and_check_see_the_modules_of_a_plugin_file(plugin: Path, tmp_path: Path) -> None:
    proc = visprog_run("exec", SHOUT, "--plugin", plugin, cwd=tmp_path)
    assert (proc.returncode, proc.stdout) == (0, "FINAL_RESULT: HELLO!\n"), proc.stderr

    proc = visprog_run("check", SHOUT, "--plugin", plugin, cwd=tmp_path)
    assert (proc.returncode, proc.stdout) == (0, "<argument>: ok, 2 steps, inputs none, result FINAL_RESULT (str)\n")
    without = visprog_run("check", SHOUT, cwd=tmp_path)
    assert without.returncode == 1 and "unknown module 'Shout'" in without.stderr


def test_modules_lists_a_plugin_files_modules_with_their_file(plugin: Path, tmp_path: Path) -> None:
    proc = visprog_run("modules", "--json", "--plugin", plugin, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    listed = {m["name"]: m for m in json.loads(proc.stdout)}
    assert listed["Shout"]["source"] == f"plugin file {plugin}"
    assert listed["Shout"]["summary"] == "The text in capitals, with an exclamation mark."
    assert listed["Boom"]["params"][0]["type"] == "Image"
    assert "Crop" in listed  # the built-in modules are still there


def test_every_command_takes_plugin(plugin: Path, tmp_path: Path) -> None:
    for argv in (["fmt", SHOUT], ["graph", SHOUT], ["models", "list"], ["cache", "info"]):
        proc = visprog_run(*argv, "--plugin", plugin, cwd=tmp_path)
        assert proc.returncode == 0, (argv, proc.stderr)
    proc = visprog_run("graph", SHOUT, "--plugin", plugin, cwd=tmp_path)
    assert 's0["X = Shout<br/>line 1"]' in proc.stdout
    for argv in (["ask", "photo.png", "?"], ["eval", "data.jsonl", "--task", "gqa", "-o", "r.jsonl"], ["serve"]):
        proc = visprog_run(*argv, "--plugin", tmp_path / "missing.py", cwd=tmp_path)  # loaded before anything else
        assert_usage_error(proc, "missing.py (--plugin): no such file")


def test_the_plugin_path_names_files_and_folders(plugin: Path, tmp_path: Path) -> None:
    folder = tmp_path / "more"
    folder.mkdir()
    (folder / "whisper.py").write_text(PLUGIN.replace("Shout", "Whisper").replace("Boom", "Fizzle"))
    (folder / "notes.txt").write_text("not Python")
    (folder / "sub").mkdir()
    (folder / "sub" / "deeper.py").write_text("raise RuntimeError('a subfolder is not read')")
    path = os.pathsep.join([str(plugin), "", str(folder)])
    both = "A=Shout(text='x')\nB=Whisper(text=A)\nFINAL_RESULT=Result(var=B)"
    proc = visprog_run("check", both, cwd=tmp_path, VISPROG_PLUGIN_PATH=path)
    assert proc.returncode == 0, proc.stderr

    proc = visprog_run("check", SHOUT, cwd=tmp_path, VISPROG_PLUGIN_PATH=str(tmp_path / "gone"))
    assert proc.returncode == 2
    assert proc.stderr == f"error: $VISPROG_PLUGIN_PATH: no such file or folder: {tmp_path / 'gone'}\n"


def test_a_file_named_twice_registers_once(plugin: Path, tmp_path: Path) -> None:
    # by its full path, by a relative one, and once more in the folder of the plugin path
    twice: list[str | Path] = ["--plugin", plugin, "--plugin", "my_modules.py"]
    proc = visprog_run("exec", SHOUT, *twice, cwd=tmp_path, VISPROG_PLUGIN_PATH=str(tmp_path))
    assert (proc.returncode, proc.stdout) == (0, "FINAL_RESULT: HELLO!\n"), proc.stderr


def test_the_config_files_plugins_relative_to_it(plugin: Path, tmp_path: Path) -> None:
    config = tmp_path / "conf" / "visprog.toml"
    config.parent.mkdir()
    config.write_text('plugins = ["../my_modules.py"]\n')
    proc = visprog_run("exec", SHOUT, "--config", config, cwd=tmp_path)
    assert (proc.returncode, proc.stdout) == (0, "FINAL_RESULT: HELLO!\n"), proc.stderr
    proc = visprog_run("check", SHOUT, cwd=tmp_path, VISPROG_CONFIG=str(config))
    assert proc.returncode == 0, proc.stderr

    config.write_text('plugins = ["my_modules.py"]\n')  # conf/my_modules.py does not exist
    proc = visprog_run("check", SHOUT, "--config", config, cwd=tmp_path)
    assert_usage_error(proc, f"{config.parent / 'my_modules.py'} (config file {config}: plugins): no such file")
    config.write_text('plugins = "my_modules.py"\n')
    proc = visprog_run("check", SHOUT, "--config", config, cwd=tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert f"config file {config}: plugins must be a list of Python files" in proc.stderr


def test_the_config_files_module_options_may_name_a_plugins_module(tmp_path: Path) -> None:
    (tmp_path / "tuned.py").write_text(
        textwrap.dedent(
            '''\
            import visprog
            from visprog import Context, Option


            @visprog.module(options=[Option("times", int, 2, help="how often")])
            def Repeat(text: str, ctx: Context) -> str:
                """The text, repeated.

                Args:
                    text: what to repeat.
                """
                return text * ctx.option("times")
            '''
        )
    )
    config = tmp_path / "visprog.toml"
    config.write_text('plugins = ["tuned.py"]\n[modules.Repeat]\ntimes = 3\n')
    proc = visprog_run("exec", "X=Repeat(text='ab')\nFINAL_RESULT=Result(var=X)", "--config", config, cwd=tmp_path)
    assert (proc.returncode, proc.stdout) == (0, "FINAL_RESULT: ababab\n"), proc.stderr


# --- errors ---------------------------------------------------------------------------------------------------------


def test_a_missing_plugin_file_is_a_usage_error(tmp_path: Path) -> None:
    proc = visprog_run("exec", SHOUT, "--plugin", "nowhere.py", cwd=tmp_path)
    assert_usage_error(proc, "plugin file nowhere.py (--plugin): no such file")
    proc = visprog_run("check", SHOUT, "--plugin", tmp_path, cwd=tmp_path)
    assert_usage_error(proc, "a folder, not a Python file")


def test_a_plugin_file_that_does_not_parse_names_its_line(tmp_path: Path) -> None:
    (tmp_path / "broken.py").write_text("import visprog\n\ndef Half(:\n    pass\n")
    proc = visprog_run("check", SHOUT, "--plugin", "broken.py", cwd=tmp_path)
    assert_usage_error(proc, "plugin file broken.py (--plugin): SyntaxError: ", f"(at {tmp_path / 'broken.py'}:3:")


def test_an_exception_while_importing_names_the_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "raises.py").write_text("import json\n\nSETTINGS = json.loads('{')\n")
    proc = visprog_run("modules", "--plugin", "raises.py", cwd=tmp_path)
    assert_usage_error(
        proc, "plugin file raises.py (--plugin): JSONDecodeError: ", f"called from {tmp_path / 'raises.py'}:3)"
    )
    (tmp_path / "raises.py").write_text("import visprog\n\nraise RuntimeError('not configured')\n")
    proc = visprog_run("modules", "--plugin", "raises.py", cwd=tmp_path)
    assert_usage_error(proc, f"RuntimeError: not configured (raised at {tmp_path / 'raises.py'}:3)")

    traced = visprog_run("modules", "--plugin", "raises.py", "--traceback", cwd=tmp_path)
    assert traced.returncode == 2
    head, _, last = traced.stderr.rstrip("\n").rpartition("\n")
    assert last == proc.stderr.rstrip("\n")  # the same one line, after the traceback
    assert head.startswith("Traceback (most recent call last):\n")
    assert f'File "{tmp_path / "raises.py"}", line 3, in <module>' in head
    assert "RuntimeError: not configured" in head and "importlib" not in head


def test_a_plugin_file_without_modules_or_with_a_taken_name(tmp_path: Path) -> None:
    (tmp_path / "empty.py").write_text("ANSWER = 42\n")
    proc = visprog_run("check", SHOUT, "--plugin", "empty.py", cwd=tmp_path)
    assert_usage_error(proc, "plugin file empty.py (--plugin): declares no module")

    (tmp_path / "crop.py").write_text(PLUGIN.replace("def Shout", "def Crop"))
    proc = visprog_run("check", SHOUT, "--plugin", "crop.py", cwd=tmp_path)
    assert_usage_error(proc, "crop.py", "name 'Crop' is already taken by module 'Crop'")


# --- a module that raises while a program runs ----------------------------------------------------------------------


def test_traceback_shows_the_exception_inside_a_module(plugin: Path, small_image: Path, tmp_path: Path) -> None:
    proc = visprog_run("exec", BOOM, "-i", small_image, "--plugin", plugin, cwd=tmp_path)
    assert proc.returncode == 1 and proc.stdout == ""
    assert "Traceback" not in proc.stderr
    assert "error: line 1, Boom (step X) failed: ValueError: no luck with width 24" in proc.stderr

    traced = visprog_run("exec", BOOM, "-i", small_image, "--plugin", plugin, "--traceback", cwd=tmp_path)
    assert traced.returncode == 1 and traced.stdout == ""
    tb = traced.stderr[traced.stderr.index("Traceback (most recent call last):") :]
    assert f'File "{plugin}", line {RAISE_LINE}, in explode' in tb
    assert 'raise ValueError(f"no luck with width {width}")' in tb
    assert "ValueError: no luck with width 24\nerror: line 1, Boom (step X) failed" in tb  # the error line last
    assert "StepError" not in tb  # the module's exception, not visprog's frames around it


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[ScriptedServer]:
    clean_llm_env(monkeypatch, tmp_path / "cache")
    with serve_scripted() as scripted:
        monkeypatch.setenv("OPENAI_BASE_URL", scripted.url)
        monkeypatch.setenv("VISPROG_LLM_MODEL", "tiny")
        yield scripted


def test_a_planning_command_plans_with_the_plugins_modules_and_shows_tracebacks(
    server: ScriptedServer, plugin: Path, small_image: Path, tmp_path: Path
) -> None:
    server.script([BOOM])
    proc = visprog_run("ask", small_image, "Will it work?", "--plugin", plugin, "--traceback", cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.startswith(f"program:\n{BOOM}")  # the plan checked against the plugin's modules
    assert f'File "{plugin}", line {RAISE_LINE}, in explode' in proc.stderr
    assert "Boom" in server.requests[0].body["messages"][0]["content"]  # the LLM is told of the module


def test_serve_runs_with_the_plugins_modules(
    plugin: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import visprog.apps.webapp

    monkeypatch.setattr(plugins, "_default", None)  # a registry of this test's own, dropped after it
    seen: dict[str, list[str]] = {}

    def fake_serve(host: str, port: int, **kwargs: object) -> None:
        seen["modules"] = plugins.default_registry().names()

    monkeypatch.setattr(visprog.apps.webapp, "serve", fake_serve)
    monkeypatch.delenv("VISPROG_PLUGIN_PATH", raising=False)
    monkeypatch.delenv("VISPROG_CONFIG", raising=False)
    assert main(["serve", "--port", "0", "--plugin", str(plugin)]) == 2  # the port is checked after the plugins
    assert "error: --port 0: a port is a number from 1 to 65535" in capsys.readouterr().err
    assert main(["serve", "--plugin", str(plugin), "--port", str(closed_port())]) == 0
    assert {"Shout", "Boom", "Crop"} <= set(seen["modules"])
