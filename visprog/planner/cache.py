"""An on-disk cache of plans: the program an LLM wrote, by a key over everything that shaped it.

One SQLite file, ``$VISPROG_CACHE_DIR/plans.sqlite`` (else
``~/.cache/visprog/plans.sqlite``), created on first use. Each call opens its
own short connection (threads of one process take turns on an instance), so
instances can be shared by threads and the file by processes, Ray actors
included: every call creates the table if it is missing (``CREATE TABLE IF
NOT EXISTS``, so processes that start on a new file at once agree), waits up
to 10 s for another process's lock, and runs in one transaction (a ``put`` is
one ``INSERT OR REPLACE``: a reader sees the old program or the new one,
never a part; the last writer of a key wins). The file keeps SQLite's default
rollback journal, not WAL: WAL needs every process on one host (its index is
shared memory), and a cache folder on a network file system is shared by the
nodes of a cluster.

A cache failure never stops planning. A file still locked after the wait
makes that call a miss (``get``) or a skipped write (``put``), with one
warning per instance. A cache that cannot be used (a file that is not a
database, a folder that cannot be written) warns once and acts as an empty
cache.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

__all__ = ["PlanCache", "default_cache_path"]

_SCHEMA = "CREATE TABLE IF NOT EXISTS plans (key TEXT PRIMARY KEY, program TEXT NOT NULL, created REAL NOT NULL)"
#: Seconds a call waits for another process's write lock.
_BUSY_TIMEOUT = 10.0


def default_cache_path() -> Path:
    """``$VISPROG_CACHE_DIR/plans.sqlite``, else ``~/.cache/visprog/plans.sqlite``."""
    folder = os.environ.get("VISPROG_CACHE_DIR")
    base = Path(folder).expanduser() if folder else Path.home() / ".cache" / "visprog"
    return base / "plans.sqlite"


def _is_busy(e: Exception) -> bool:
    """Whether ``e`` is SQLite's "database is locked" (busy or locked): a passing state, not a broken cache."""
    code = getattr(e, "sqlite_errorcode", None)
    if isinstance(code, int):
        return (code & 0xFF) in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
    return isinstance(e, sqlite3.OperationalError) and "locked" in str(e)


class PlanCache:
    """Programs by key, in one SQLite file."""

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path).expanduser() if path is not None else default_cache_path()
        self._lock = threading.Lock()
        self._warned = False
        self._warned_busy = False

    def __repr__(self) -> str:
        return f"PlanCache({str(self.path)!r})"

    @staticmethod
    def key(*parts: str) -> str:
        """A hex SHA-256 over ``parts``; each part is length-prefixed, so ("ab", "c") and ("a", "bc") differ."""
        digest = hashlib.sha256()
        for part in parts:
            data = part.encode("utf-8", "surrogatepass")
            digest.update(len(data).to_bytes(8, "big"))
            digest.update(data)
        return digest.hexdigest()

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """A connection in a transaction (committed on success); the table exists."""
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with closing(sqlite3.connect(self.path, timeout=_BUSY_TIMEOUT)) as conn, conn:
                conn.execute(_SCHEMA)
                yield conn

    def _unusable(self, e: Exception) -> None:
        """Warn (once per kind of failure) that a call went without the cache."""
        if _is_busy(e):
            if not self._warned_busy:
                self._warned_busy = True
                warnings.warn(
                    f"the plan cache {self.path} stayed locked by another connection for {_BUSY_TIMEOUT:g} s "
                    f"({type(e).__name__}: {e}); planning went on without it (a miss, or a plan not stored).",
                    RuntimeWarning,
                    stacklevel=3,
                )
        elif not self._warned:
            self._warned = True
            warnings.warn(
                f"the plan cache {self.path} cannot be used ({type(e).__name__}: {e}); planning without it. "
                "Delete the file or set VISPROG_CACHE_DIR to another folder.",
                RuntimeWarning,
                stacklevel=3,
            )

    def get(self, key: str) -> str | None:
        """The program stored under ``key``, or None."""
        try:
            with self._connect() as conn:
                row = conn.execute("SELECT program FROM plans WHERE key = ?", (key,)).fetchone()
        except (sqlite3.Error, OSError) as e:
            self._unusable(e)
            return None
        return None if row is None else str(row[0])

    def put(self, key: str, program: str) -> None:
        """Store ``program`` under ``key`` (replacing what was there)."""
        try:
            with self._connect() as conn:
                conn.execute(
                    "INSERT OR REPLACE INTO plans (key, program, created) VALUES (?, ?, ?)",
                    (key, program, time.time()),
                )
        except (sqlite3.Error, OSError) as e:
            self._unusable(e)

    def info(self) -> dict[str, object]:
        """What the cache holds: its path, whether the file exists, its size in bytes, the number of plans,
        and when the oldest and newest were stored (seconds since the epoch, None when empty)."""
        exists = self.path.is_file()
        out: dict[str, object] = {"path": str(self.path), "exists": exists, "bytes": 0, "plans": 0}
        out.update(oldest=None, newest=None)
        if not exists:
            return out
        out["bytes"] = self.path.stat().st_size
        try:
            with self._connect() as conn:
                row = conn.execute("SELECT COUNT(*), MIN(created), MAX(created) FROM plans").fetchone()
        except (sqlite3.Error, OSError) as e:
            raise OSError(f"the plan cache {self.path} cannot be read ({type(e).__name__}: {e})") from e
        out.update(plans=int(row[0]), oldest=row[1], newest=row[2])
        return out

    def clear(self) -> None:
        """Forget every plan."""
        try:
            with self._connect() as conn:
                conn.execute("DELETE FROM plans")
        except (sqlite3.Error, OSError) as e:
            self._unusable(e)
