"""One trainer per workdir: `<workdir>/audiossl.lock` names the owner (host, pid, start time).

A second `audiossl pretrain` on the same workdir refuses at once, naming the owner. A lock left by a
process that died (same host, pid no longer running: `kill -9`, OOM) is taken over with a warning. A
lock of another host cannot be checked from here: it is refused, and the message says how to remove
it once that run is known to be gone. Multi-host runs: only process 0 holds the file.

Local workdirs use O_CREAT | O_EXCL, so two trainers racing for the lock cannot both get it. Remote
workdirs (gs://...) have no exclusive create: the check and the write are two gfile calls, which
still catches every second trainer started after the first one's lock is written.
"""
from __future__ import annotations

import json
import os
import socket
import sys
import time

LOCK_FILE = "audiossl.lock"


class WorkdirLocked(RuntimeError):
    """Another live trainer owns the workdir."""


def _owner_text(owner: dict) -> str:
    started = owner.get("started")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) if isinstance(started, (int, float)) else "?"
    return f"host {owner.get('host', '?')}, pid {owner.get('pid', '?')}, started {when}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


class WorkdirLock:
    """`with WorkdirLock(workdir):` or `acquire()` / `release()`; releasing removes the file only if
    it still names this process."""

    def __init__(self, workdir: str, log=None):
        self.path = os.path.join(workdir, LOCK_FILE)
        self.workdir = workdir
        self._remote = "://" in workdir
        self._log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self._me = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time(),
                    "argv": sys.argv}
        self.held = False

    # ---- file primitives (local: exclusive create; remote: gfile) ----
    def _read(self) -> dict | None:
        import tensorflow as tf

        try:
            with tf.io.gfile.GFile(self.path) as f:
                text = f.read()
        except tf.errors.NotFoundError:
            return None
        try:
            owner = json.loads(text)
            return owner if isinstance(owner, dict) else {}
        except ValueError:
            return {}  # torn write: an owner we cannot name

    def _create(self) -> bool:
        text = json.dumps(self._me)
        if self._remote:
            import tensorflow as tf

            if tf.io.gfile.exists(self.path):
                return False
            tf.io.gfile.makedirs(self.workdir)
            with tf.io.gfile.GFile(self.path, "w") as f:
                f.write(text)
            return True
        os.makedirs(self.workdir, exist_ok=True)
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            f.write(text)
        return True

    def _remove(self) -> None:
        import tensorflow as tf

        try:
            tf.io.gfile.remove(self.path)
        except tf.errors.NotFoundError:
            pass

    # ---- public ----
    def acquire(self) -> "WorkdirLock":
        for _ in range(3):  # a stale lock removed by a racing trainer: try again
            if self._create():
                self.held = True
                return self
            owner = self._read()
            if owner is None:
                continue  # released in between
            if self._is_stale(owner):
                self._log(f"warning: taking over the stale lock {self.path} ({_owner_text(owner)}: "
                          "that process is no longer running)")
                self._remove()
                continue
            raise WorkdirLocked(
                f"workdir {self.workdir} is in use by another `audiossl pretrain` ({_owner_text(owner)}; "
                f"lock file {self.path}). Wait for it to finish, stop it, or use another --workdir; "
                "if that process is gone (e.g. its machine was lost), delete the lock file.")
        raise WorkdirLocked(f"could not take the lock {self.path}: it keeps changing hands")

    def _is_stale(self, owner: dict) -> bool:
        pid = owner.get("pid")
        if owner.get("host") != self._me["host"] or not isinstance(pid, int):
            return False
        if pid == self._me["pid"]:
            return False  # this very process holds it (another pretrain call in a thread): not stale
        return not _pid_alive(pid)

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        owner = self._read()
        if owner is not None and owner.get("pid") == self._me["pid"] and owner.get("host") == self._me["host"]:
            self._remove()

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
