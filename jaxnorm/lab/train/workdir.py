"""The run directory: checked before anything is written, and held by one run at a time.

The lock is an OS file lock (``fcntl.flock``) on ``WORKDIR/.lock``, held for the life of the run and released by the
kernel when the process dies, however it dies; the file records who holds it, so a second run into the same workdir
exits at once with one line naming the holder's pid and host. File locks are advisory and local to one machine's
kernel (on NFS they may not be enforced): in multi-process runs process 0, the one that writes, takes it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import time

LOCK_NAME = ".lock"


class WorkdirError(RuntimeError):
    """The workdir cannot be used: not a directory, not writable, or held by another run."""


def check(workdir: str) -> None:
    """WorkdirError unless ``workdir`` is a non-empty path that is (or can be created as) a writable directory."""
    if not workdir:
        raise WorkdirError("the workdir is empty: give the run directory, e.g. --workdir runs/mine")
    path = os.path.abspath(workdir)
    if os.path.exists(path) and not os.path.isdir(path):
        raise WorkdirError(f"the workdir {path} exists and is not a directory; use another --workdir")
    existing = path
    while not os.path.exists(existing):  # the nearest existing ancestor is where the directory would be created
        existing = os.path.dirname(existing)
    if not os.access(existing, os.W_OK | os.X_OK):
        raise WorkdirError(
            f"the workdir {path} is not writable ({existing} does not allow writing); use another "
            "--workdir or fix its permissions"
        )


@contextlib.contextmanager
def locked(workdir: str):
    """Hold the exclusive lock of ``workdir`` (created if needed) for the ``with`` block."""
    check(workdir)
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, LOCK_NAME)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise _in_use(workdir, path) from None
        os.ftruncate(fd, 0)
        os.write(
            fd,
            json.dumps(
                {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
            ).encode(),
        )
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def refuse_if_in_use(workdir: str) -> None:
    """WorkdirError at once when another run holds ``workdir``'s lock: a look before a run loads its data and
    builds its model (seconds), so that a second run into a busy workdir exits at once. The lock itself is taken by
    :func:`locked`; this only tries it and lets go."""
    path = os.path.join(workdir, LOCK_NAME)
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # no lock file (nothing ran here) or unreadable: locked() decides
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise _in_use(workdir, path) from None
    finally:
        os.close(fd)  # releases the lock this look took, if it took it


def _in_use(workdir: str, path: str) -> WorkdirError:
    return WorkdirError(
        f"{os.path.abspath(workdir)} is in use by another run ({_holder(path)}); wait for it "
        "to finish, stop it, or use another --workdir"
    )


def _holder(path: str) -> str:
    try:
        with open(path) as f:
            h = json.load(f)
        return f"pid {h['pid']} on {h['host']}, since {h['since']}"
    except (OSError, ValueError, KeyError):
        return "holder unknown"
