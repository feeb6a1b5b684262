"""``visprog cache info|clear``: what the plan cache holds, and forgetting it."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from typing import TextIO

from visprog.planner.cache import PlanCache

__all__ = ["add_cache_parser", "cache_command"]


def add_cache_parser(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], parents: Sequence[argparse.ArgumentParser] = ()
) -> None:
    """``visprog cache``, with the options every command takes (``parents``)."""
    p = sub.add_parser("cache", parents=list(parents), help="show what the plan cache holds, or clear it")
    p.add_argument("action", choices=["info", "clear"], help="info: where it is and what it holds; clear: forget it")
    p.add_argument("--json", action="store_true", help="machine-readable output (info)")
    p.set_defaults(func=cache_command)


def _when(seconds: object) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds)) if isinstance(seconds, float) else "-"


def cache_command(args: argparse.Namespace, out: TextIO) -> int:
    cache = PlanCache()  # $VISPROG_CACHE_DIR/plans.sqlite, else ~/.cache/visprog/plans.sqlite
    if args.action == "clear":
        before = cache.info()
        if before["exists"]:
            cache.clear()
        print(f"cleared {before['plans']} plan(s) from {cache.path}", file=args.stderr)
        return 0
    info = cache.info()
    if args.json:
        json.dump(info, out)
        out.write("\n")
        return 0
    if not info["exists"]:
        print(f"{info['path']}: no plan cache yet (planning creates it)", file=out)
        return 0
    print(f"{info['path']}: {info['plans']} plan(s), {info['bytes']:,} bytes", file=out)
    print(f"oldest {_when(info['oldest'])}, newest {_when(info['newest'])}", file=out)
    return 0
