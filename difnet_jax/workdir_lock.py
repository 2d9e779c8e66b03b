"""One training per workdir: WORKDIR/training.lock names the process (host, pid) that trains there.

`WorkdirLock.acquire(workdir)` (process 0 of a run; the other hosts of a multi-host run take
none) holds an exclusive `fcntl.flock` on the file for the whole run, writes its host, pid,
start time and command line into it, refreshes the file's mtime every `HEARTBEAT_S` seconds
and deletes it on `release()`. A second training on the same workdir stops at once with
`WorkdirInUse`: one line naming the workdir, the holder and what to do. Evaluation and
prediction only read a workdir and take no lock.

A lock file whose holder is gone (SIGKILL, out of memory, a crashed machine) is stale and is
taken over with a warning naming the old holder:
- same host: its flock is free (the kernel drops it with the process); on a file system
  without flock, the recorded pid is not running;
- another host (a shared file system): a pid there cannot be checked, and flock is shared
  across hosts only on some network file systems, so the file's age decides (our choice): it
  is stale once not refreshed for `STALE_AFTER_S` (10 minutes, ten missed heartbeats, room
  for clock skew). Until then the message says to delete the file if that run is gone.
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import json
import logging
import os
import socket
import sys
import threading
import time
from typing import Any

from difnet_jax.user_errors import PathError

log = logging.getLogger(__name__)

LOCK_NAME = "training.lock"
HEARTBEAT_S = 60.0
STALE_AFTER_S = 600.0


class WorkdirInUse(PathError):
    """Another training holds the workdir's lock (a user error: the CLIs print its one line, exit 2)."""


def pid_running(pid: int) -> bool:
    """Whether a process `pid` exists on this host (a process of another user counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def describe(holder: dict[str, Any]) -> str:
    """'pid N on host H, started T'."""
    return (f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}, "
            f"started {holder.get('started', '?')}")


def _in_use(workdir: str, path: str, who: str) -> WorkdirInUse:
    return WorkdirInUse(f"workdir {workdir!r} is in use by another training ({who}): wait for it or stop it, "
                        f"or use another --workdir (if that run is gone, delete {path})")


def _read_holder(fd: int) -> dict[str, Any] | None:
    """The holder's record, {} for an empty file, None if it cannot be parsed (being written)."""
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 65536).decode(errors="replace")
    if not text.strip():
        return {}
    try:
        holder = json.loads(text)
    except json.JSONDecodeError:
        return None
    return holder if isinstance(holder, dict) else None


def training_in(workdir: str) -> dict[str, Any] | None:
    """The record (host, pid, started, command) of the training that holds `workdir` now, or None; reads only.

    Held: on this host, its process is running; on another host, the file was refreshed within `STALE_AFTER_S`.
    """
    path = os.path.join(workdir, LOCK_NAME)
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        holder = _read_holder(fd)
        age = time.time() - os.fstat(fd).st_mtime
    finally:
        os.close(fd)
    if not holder:
        return None
    if holder.get("host") == socket.gethostname():
        pid = holder.get("pid")
        return holder if isinstance(pid, int) and pid_running(pid) else None
    return holder if age < STALE_AFTER_S else None


class WorkdirLock:
    """The held lock of one workdir; `release()` (or leaving the `with` block) frees it."""

    def __init__(self, path: str, fd: int):
        self.path, self._fd = path, fd
        self._stop = threading.Event()
        self._heartbeat = threading.Thread(target=self._beat, name="workdir-lock-heartbeat", daemon=True)
        self._heartbeat.start()

    @classmethod
    def acquire(cls, workdir: str) -> WorkdirLock:
        """Takes WORKDIR/training.lock, or raises `WorkdirInUse` naming the holder (see the module docstring)."""
        os.makedirs(workdir, exist_ok=True)
        path = os.path.join(workdir, LOCK_NAME)
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                flocked = cls._flock(fd, workdir, path)
                try:
                    same_file = os.fstat(fd).st_ino == os.stat(path).st_ino
                except FileNotFoundError:
                    same_file = False
                if not same_file:  # released (and deleted) between our open and flock: try the new file
                    os.close(fd)
                    continue
                cls._check_holder(fd, workdir, path, flocked)
                info = {"host": socket.gethostname(), "pid": os.getpid(),
                        "started": datetime.datetime.now().isoformat(timespec="seconds"),
                        "command": " ".join(sys.argv)}
                os.ftruncate(fd, 0)
                os.lseek(fd, 0, os.SEEK_SET)
                os.write(fd, (json.dumps(info) + "\n").encode())
                os.fsync(fd)
            except BaseException:
                os.close(fd)
                raise
            return cls(path, fd)

    @staticmethod
    def _flock(fd: int, workdir: str, path: str) -> bool:
        """True once flocked; False on a file system without flock; WorkdirInUse if another process holds it."""
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            holder = None
            for _ in range(20):  # the holder may be writing its record right now
                holder = _read_holder(fd)
                if holder:
                    break
                time.sleep(0.05)
            raise _in_use(workdir, path, describe(holder) if holder else "its process is starting") from None
        except OSError as error:
            if error.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
                return False
            raise

    @staticmethod
    def _check_holder(fd: int, workdir: str, path: str, flocked: bool) -> None:
        """Raises WorkdirInUse unless the file is empty or its holder is gone (then warns: taken over)."""
        holder = _read_holder(fd)
        if not holder:
            return
        host, pid = holder.get("host"), holder.get("pid")
        if host == socket.gethostname():
            if not flocked and isinstance(pid, int) and pid != os.getpid() and pid_running(pid):
                raise _in_use(workdir, path, describe(holder))
            reason = "that process is no longer running"
        else:
            age = time.time() - os.fstat(fd).st_mtime
            if age < STALE_AFTER_S:
                raise WorkdirInUse(
                    f"workdir {workdir!r} is in use by a training on another host ({describe(holder)}; lock "
                    f"refreshed {age:.0f} s ago): if that run is gone, delete {path}, or wait until it is "
                    f"{STALE_AFTER_S / 60:.0f} min old")
            reason = f"not refreshed for {age / 60:.0f} min"
        log.warning("Took over the stale lock %s of %s (%s).", path, describe(holder), reason)

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                os.utime(self._fd)
            except OSError:  # a heartbeat that fails only shortens the time until another host may take over
                pass

    def release(self) -> None:
        """Deletes the lock file, then frees the flock (in that order: a waiting opener sees the file is gone)."""
        if self._fd is None:
            return
        self._stop.set()
        self._heartbeat.join()
        try:
            os.remove(self.path)
        except FileNotFoundError:
            pass
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> WorkdirLock:
        return self

    def __exit__(self, *exc) -> bool:
        self.release()
        return False
