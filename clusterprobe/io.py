"""Atomic file-system helpers: a reader never sees a half-written file or directory."""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import fcntl
import hashlib
import json
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from .errors import LockedError, OutputPathError


def fsync_directory(path: Path) -> None:
    """Flush a directory entry (a rename inside it) to disk where the platform allows."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[Any], None], mode: str = "wb") -> Path:
    """Write a file through ``write(file_object)`` into a temporary sibling, then rename it.

    If anything fails (including a full disk) the previous file at ``path`` stays intact and the
    temporary file is removed. The file gets the mode ``open()`` would give it: an existing
    file's mode is kept, a new file gets 0666 minus the process umask (0644 under umask 022).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, _file_mode(path))  # mkstemp makes 0600; readers (web servers, groups) need more
        with os.fdopen(fd, mode) as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    fsync_directory(path.parent)
    return path


def _file_mode(path: Path) -> int:
    """The mode ``open(path, "w")`` would leave: the existing file's, else 0666 minus the umask."""
    try:
        return path.stat().st_mode & 0o7777
    except FileNotFoundError:
        return 0o666 & ~_umask()


def _umask() -> int:
    """The process umask, read without changing it where the system shows it (Linux's
    ``/proc/self/status``). Elsewhere ``os.umask`` must set a value to read the old one; it sets
    077 for that moment, so a file another thread creates meanwhile is private rather than
    world-writable (as it would be with 0)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    umask = os.umask(0o077)
    os.umask(umask)
    return umask


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON, atomically."""
    text = json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n"
    return atomic_write(path, lambda f: f.write(text), mode="w")


def read_json(path: str | os.PathLike) -> Any:
    with open(path) as handle:
        return json.load(handle)


def replace_directory(source: Path, target: Path) -> None:
    """Move a finished directory ``source`` to ``target``, replacing an existing one.

    The old target is first renamed aside, so at every instant either the old or the new
    directory is complete at ``target``'s name (or, for a moment, neither: never a mixture).
    """
    source, target = Path(source), Path(target)
    if target.exists():
        trash = target.with_name(f".{target.name}.old-{os.getpid()}")
        if trash.exists():
            shutil.rmtree(trash)
        os.replace(target, trash)
        os.replace(source, target)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(source, target)
    fsync_directory(target.parent)


def sha256_file(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk_size), b""):
            digest.update(block)
    return digest.hexdigest()


def fingerprint(obj: Any) -> str:
    """Stable short hash of a JSON-able description of settings."""
    text = json.dumps(obj, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# -- locks --------------------------------------------------------------------------------------
def lock_file_of(target: str | os.PathLike) -> Path:
    """The lock file that guards ``target``: a hidden sibling, ``<parent>/.<name>.lock``.

    It lives beside the target (not inside it) because banks and reports are replaced by a
    directory rename, and because a run folder must stay empty until the run writes into it.
    """
    target = Path(os.path.abspath(target))  # "runs/x/.." and "." have names too
    return target / ".lock" if not target.name else target.with_name(f".{target.name}.lock")


def read_lock_holder(target: str | os.PathLike) -> dict:
    """What the process holding ``target``'s lock wrote into the lock file ({} if unreadable)."""
    try:
        holder = json.loads(lock_file_of(target).read_text())
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def describe_holder(holder: Mapping[str, Any]) -> str:
    """``"process 1234 on host x (since 2026-...)"`` from a lock file's contents."""
    if not holder.get("pid"):
        return "another process"
    text = f"process {holder['pid']}"
    if holder.get("host") and holder["host"] != socket.gethostname():
        text += f" on host {holder['host']}"
    if holder.get("since"):
        text += f", since {holder['since']}"
    return text


@contextlib.contextmanager
def exclusive_lock(target: str | os.PathLike, *, wait: bool | float = False, what: str | None = None,
                   info: Mapping[str, Any] | None = None, poll_s: float = 0.2) -> Iterator[Path]:
    """Hold the advisory lock of ``target`` (a bank, run or report folder) for a ``with`` block.

    ``fcntl.flock`` on ``lock_file_of(target)``: the kernel releases it when the holder exits or
    is killed (SIGKILL included), so a dead process never blocks the next one. The lock file
    holds the holder's ``pid``, ``host``, ``since`` and ``info`` (:func:`read_lock_holder`); it
    is removed on release. Advisory: it excludes only processes that take the same lock.

    Args:
        target: the path being guarded (it need not exist yet; its parent is created).
        wait: False: refuse at once if the lock is held; True: wait as long as it takes; a
            number: wait up to that many seconds, then refuse.
        what: the guarded thing in messages (default: ``str(target)``).
        info: JSON-able details for contenders (e.g. ``{"request": fingerprint}``).

    Raises:
        LockedError: held by another process (its ``holder`` attribute: the lock file's contents).
        OutputPathError: the lock file cannot be created (read-only or missing permissions).

    >>> with exclusive_lock("runs/report", what="the report folder runs/report"):  # doctest: +SKIP
    ...     write_report()
    """
    target = Path(target)
    what = what or str(target)
    path = lock_file_of(target)
    deadline = None if wait is True else time.monotonic() + (0.0 if wait is False else float(wait))
    while True:
        fd = _open_lock_file(path, what)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if deadline is None else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            if time.monotonic() >= deadline:
                holder = read_lock_holder(target)
                raise LockedError(f"{what} is in use by {describe_holder(holder)} (lock file {path}).",
                                  holder) from None
            time.sleep(poll_s)
            continue
        except BaseException:
            os.close(fd)
            raise
        # The previous holder may have removed the file between our open() and flock(): then
        # we hold a lock on an orphaned inode and must start again on the current file.
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        record = {"pid": os.getpid(), "host": socket.gethostname(),
                  "since": _dt.datetime.now().isoformat(timespec="seconds"), **dict(info or {})}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record, default=str) + "\n").encode(), 0)
        yield path
    finally:
        try:
            os.unlink(path)  # while still holding it: a waiter then sees a new inode and retries
        except OSError:
            pass
        os.close(fd)


def _open_lock_file(path: Path, what: str) -> int:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as error:
        raise OutputPathError(
            f"Cannot write {what}: {path.parent} is not writable ({error.strerror or error})."
        ) from None


# -- disk space ---------------------------------------------------------------------------------
def free_bytes(path: str | os.PathLike) -> int:
    """Bytes available to this user on the file system holding ``path``."""
    return shutil.disk_usage(path).free


def preallocate(path: str | os.PathLike) -> None:
    """Reserve disk blocks for the whole of the (possibly sparse) file ``path``.

    Writes through a memory map into a sparse file that meets a full disk kill the process with
    SIGBUS; after this they cannot. Raises ``OSError(ENOSPC)`` when the space is not there. Where
    the file system cannot reserve (``posix_fallocate`` missing or unsupported) it does nothing;
    callers check :func:`free_bytes` beforehand for that case.
    """
    allocate = getattr(os, "posix_fallocate", None)
    if allocate is None:
        return
    size = os.path.getsize(path)
    if size == 0:
        return
    fd = os.open(path, os.O_RDWR)
    try:
        allocate(fd, 0, size)
    except OSError as error:
        if error.errno in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            return
        raise
    finally:
        os.close(fd)
