"""The output file of an evaluation: locked while an evaluation writes it, read back to resume, appended to.

One evaluation at a time writes a file: :class:`ResultsFile` holds an advisory lock on it
(``fcntl.flock`` on POSIX, ``msvcrt.locking`` on Windows) from opening to closing, and a second
evaluation of the same file stops at once with a :class:`ResultsError` instead of planning and
writing every item again. Records are JSON lines in ASCII (``ensure_ascii``: whatever the items
hold), each written with its own system call as it comes. A line cut short by a crash (or a full disk)
is ignored when the file is read back, and ended before the next record is appended.

Every way the file can fail is a :class:`ResultsError` naming it: a folder or a device instead of a
file, a file in use by another evaluation, lines that are not UTF-8 (not a results file), a disk that is
read-only or full. Nothing already in the file is changed or lost.
"""

from __future__ import annotations

import errno
import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from visprog.errors import VisprogError

__all__ = ["ResultsError", "ResultsFile"]

#: Where the Windows lock sits: one byte far past the end of any results file, so that other programs can
#: still read the records while an evaluation runs (Windows locks are mandatory for the bytes they cover).
_WINDOWS_LOCK_OFFSET = 2**31 - 2

#: Errors of a file system that keeps no locks (some network file systems): the evaluation goes on unlocked.
_NO_LOCKS = {errno.ENOLCK, errno.EOPNOTSUPP, getattr(errno, "ENOTSUP", errno.EOPNOTSUPP)}


class ResultsError(VisprogError):
    """The output file of an evaluation cannot be used: a folder, in use by another evaluation, not a results
    file, or it cannot be written (a read-only or full disk). The message names the file and what to do."""


def _reason(e: OSError) -> str:
    return e.strerror or str(e) or type(e).__name__


class ResultsFile:
    """An evaluation's output file, opened for reading and appending and locked until it is closed.

    Use it as a context manager: entering opens the file (making it, and its folder, when need be) and locks
    it; leaving unlocks and closes it. A file this object made that is still empty when it leaves with an
    error is removed again, so that a refused evaluation leaves nothing behind.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.fd: int | None = None
        self.created = False
        self.written = 0  # records appended by this object
        self._ended = True  # whether the file's last line is ended (true for an empty file)

    def __enter__(self) -> ResultsFile:
        self.open()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.close(discard_empty=kind is not None)

    def open(self) -> None:
        """Open and lock the file (a :class:`ResultsError` when it is a folder, in use, or cannot be written)."""
        path = self.path
        if path.is_dir():
            raise ResultsError(
                f"{path} is a folder: the records of an evaluation go to a file, e.g. {path / 'results.jsonl'}"
            )
        if path.exists() and not path.is_file():
            raise ResultsError(f"{path} is not a regular file: the records go to a file, read back to resume")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ResultsError(f"cannot make the folder {path.parent} for {path.name}: {_reason(e)}") from None
        for _ in range(10):  # another evaluation may remove an empty file it made between our open and our lock
            fd = self._open_fd()
            self._lock(fd)
            if self._same_file(fd):
                self.fd = fd
                return
            os.close(fd)
        raise ResultsError(f"cannot lock {path}: the file keeps being made and removed")

    def _open_fd(self) -> int:
        flags = os.O_RDWR | os.O_APPEND | getattr(os, "O_BINARY", 0)
        try:
            while True:  # made here (and then removed again when the evaluation is refused), or opened
                try:
                    fd = os.open(self.path, flags | os.O_CREAT | os.O_EXCL, 0o666)
                    self.created = True
                    return fd
                except FileExistsError:
                    pass
                try:
                    fd = os.open(self.path, flags)
                    self.created = False
                    return fd
                except FileNotFoundError:
                    continue  # removed in between: make it
        except OSError as e:  # read-only disk, no permission, a name too long
            raise ResultsError(f"cannot write the records to {self.path}: {_reason(e)}") from None

    def _lock(self, fd: int) -> None:
        """Lock ``fd`` without waiting (a :class:`ResultsError` when another evaluation holds the lock)."""
        try:
            if sys.platform == "win32":
                import msvcrt

                os.lseek(fd, _WINDOWS_LOCK_OFFSET, os.SEEK_SET)
                msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            else:
                import fcntl

                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno in _NO_LOCKS:
                print(
                    f"warning: {self.path}: this file system keeps no file locks; "
                    "make sure no other evaluation writes to this file",
                    file=sys.stderr,
                )
                return
            os.close(fd)
            raise ResultsError(
                f"{self.path} is in use by another evaluation (it holds the file's lock): "
                "wait for it to end, or write this one to another file (-o)"
            ) from None

    def _same_file(self, fd: int) -> bool:
        """Whether the path still names the file ``fd`` locked (not a file removed before the lock was taken)."""
        try:
            now = os.stat(self.path)
        except FileNotFoundError:
            return False
        mine = os.fstat(fd)
        return (now.st_dev, now.st_ino) == (mine.st_dev, mine.st_ino)

    def close(self, *, discard_empty: bool = False) -> None:
        """Unlock and close the file; with ``discard_empty``, remove it when this object made it and it is empty."""
        if self.fd is None:
            return
        fd, self.fd = self.fd, None
        try:
            if discard_empty and self.created and os.fstat(fd).st_size == 0:
                self.path.unlink(missing_ok=True)  # still locked: no evaluation can have started writing to it
        except OSError:
            pass  # leaving an empty file behind loses nothing
        finally:
            if sys.platform == "win32":
                import msvcrt

                try:
                    os.lseek(fd, _WINDOWS_LOCK_OFFSET, os.SEEK_SET)
                    msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
                except OSError:
                    pass  # closing the file releases it too
            os.close(fd)

    def _fd(self) -> int:
        if self.fd is None:
            raise ValueError(f"{self.path} is not open: use ResultsFile as a context manager")
        return self.fd

    def records(self) -> dict[str, dict[str, Any]]:
        """The records in the file by id: every line that is a JSON object with an ``id``.

        A line cut short by a crash is ignored (as is any line that is not JSON). A line that is not UTF-8
        text is a :class:`ResultsError` naming it: the file is not one an evaluation wrote (those are
        ASCII), and nothing in it is changed.
        """
        fd = self._fd()
        os.lseek(fd, 0, os.SEEK_SET)
        chunks = []
        while block := os.read(fd, 1 << 20):
            chunks.append(block)
        data = b"".join(chunks)
        self._ended = not data or data.endswith(b"\n")
        lines = data.split(b"\n")
        if lines and not lines[-1]:
            lines.pop()
        out: dict[str, dict[str, Any]] = {}
        for number, raw in enumerate(lines, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:  # visprog writes ASCII: even a line cut short by a crash is ASCII
                raise ResultsError(
                    f"{self.path}:{number}:{e.start + 1}: not UTF-8 text (byte 0x{raw[e.start]:02X}), so not the "
                    "records of an evaluation: write this one to another file (-o)"
                ) from None
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict) and "id" in rec:
                out[str(rec["id"])] = rec
        return out

    def end_last_line(self) -> None:
        """End the file's last line if a crash cut it short, so that the next record starts a line of its own.

        :meth:`records` must have read the file first (it finds out how the file ends).
        """
        if not self._ended:
            self._append(b"\n")
            self._ended = True

    def write(self, record: Mapping[str, Any]) -> None:
        """Append one record as a JSON line (one system call as a rule: the line is in the file when this returns)."""
        self._append((json.dumps(record) + "\n").encode("ascii"))
        self.written += 1

    def write_summary(self, summary: Mapping[str, Any]) -> Path:
        """Save the summary as ``<stem>.summary.json`` next to the file; where it went."""
        target = self.path.with_name(f"{self.path.stem}.summary.json")
        try:
            target.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        except OSError as e:
            raise ResultsError(
                f"cannot write the summary to {target}: {_reason(e)}; the records are saved in {self.path}"
            ) from None
        return target

    def _append(self, data: bytes) -> None:
        fd = self._fd()
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(fd, view) :]
        except OSError as e:
            self._ended = False  # part of the line may be in the file: the next run ends it first
            raise ResultsError(
                f"cannot write to {self.path}: {_reason(e)}; the {self.written} record(s) written before "
                "are saved (with any others the file held): when it can be written again, run the same "
                "command to resume"
            ) from None
