"""Start-up time of ``visprog check FILE`` (a fresh process, median of 5) and proof that torch is not imported."""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import _common

PROGRAM = """\
BOX0=Loc(image=IMAGE, object='dog')
ANSWER0=Count(box=BOX0)
ANSWER1=Vqa(image=IMAGE, question='Is there a cat?')
ANSWER2=Eval(expr="'{ANSWER1}' == 'yes' and {ANSWER0} > 0")
FINAL_RESULT=Result(var=ANSWER2)
"""

PROBE = (
    "import sys\n"
    "from visprog.apps.cli import main\n"
    "code = main(['check', sys.argv[1]])\n"
    "heavy = sorted(m for m in ('torch', 'transformers') if m in sys.modules)\n"
    "print('HEAVY=' + ','.join(heavy))\n"
    "sys.exit(code)\n"
)


def measure(repeats: int) -> list[_common.Row]:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "program.vp"
        path.write_text(PROGRAM)
        command = [sys.executable, "-m", "visprog", "check", str(path)]
        times = []
        for _ in range(repeats + 1):  # the first run warms the file cache
            t0 = time.perf_counter()
            done = subprocess.run(command, capture_output=True, text=True, cwd=_common.ROOT, timeout=60)
            times.append(time.perf_counter() - t0)
            if done.returncode != 0:
                raise RuntimeError(f"visprog check failed ({done.returncode}):\n{done.stdout}{done.stderr}")
        seconds = statistics.median(times[1:])
        probe = subprocess.run(
            [sys.executable, "-c", PROBE, str(path)], capture_output=True, text=True, cwd=_common.ROOT, timeout=60
        )
        heavy_line = [line for line in probe.stdout.splitlines() if line.startswith("HEAVY=")]
        if probe.returncode != 0 or not heavy_line:
            raise RuntimeError(f"the import probe failed ({probe.returncode}):\n{probe.stdout}{probe.stderr}")
        heavy = heavy_line[0].removeprefix("HEAVY=")
    return [
        (f"`visprog check FILE` wall time, median of {repeats}, ms", f"{seconds * 1e3:.0f}", "", ""),
        ("torch / transformers imported by `visprog check`", heavy or "neither", "neither", _common.met(not heavy)),
    ]


def main(argv: Sequence[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a tiny size, to check the script works")
    args = parser.parse_args(argv)
    out = _common.table(measure(1 if args.quick else 5), "4. `visprog check` start-up")
    print(out)
    return out


if __name__ == "__main__":
    main()
