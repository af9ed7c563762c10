"""One trainer per workdir: `<workdir>/audiossl.lock` names the owner (host, pid, start time).

A second `audiossl pretrain` on the same workdir refuses at once, naming the owner. Multi-host runs:
only process 0 holds the lock.

Local workdirs: the owner holds an exclusive `flock` on the file for the whole run. The kernel drops
it when the owner dies in any way (`kill -9`, OOM), so a lock left by a dead trainer is taken over -
with a warning naming it - and a live one never is, even if its pid was reused by another process or
two restarts race for it.

Remote workdirs (gs://...) have no locks: the file itself is the lock (check, then write). A lock of
this host whose pid is dead is taken over with a warning; a lock of another host is refused, and the
message says how to remove it once that run is known to be gone. Two trainers started in the same
instant on gs:// might both get in; one started while another runs is always refused.
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


def _parse(text: str) -> dict | None:
    if not text.strip():
        return None
    try:
        owner = json.loads(text)
    except ValueError:
        return {}  # torn write: an owner we cannot name
    return owner if isinstance(owner, dict) else {}


class WorkdirLock:
    """`acquire()` / `release()` (or `with`); releasing removes the file."""

    def __init__(self, workdir: str, log=None):
        self.path = os.path.join(workdir, LOCK_FILE)
        self.workdir = workdir
        self._remote = "://" in workdir
        self._log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self._me = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time(), "argv": sys.argv}
        self._fd: int | None = None
        self.held = False

    def _refuse(self, owner: dict | None) -> WorkdirLocked:
        return WorkdirLocked(
            f"workdir {self.workdir} is in use by another `audiossl pretrain` ({_owner_text(owner or {})}; "
            f"lock file {self.path}). Wait for it to finish, stop it, or use another --workdir; "
            "if that process is gone (e.g. its machine was lost), delete the lock file."
        )

    def _warn_takeover(self, owner: dict) -> None:
        self._log(
            f"warning: taking over the stale lock {self.path} ({_owner_text(owner)}: that process is no longer running)"
        )

    # ---- local: flock ----
    def _acquire_local(self) -> None:
        import fcntl

        os.makedirs(self.workdir, exist_ok=True)
        for _ in range(10):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:  # held by a live process
                owner = _parse(os.read(fd, 65536).decode(errors="replace"))
                os.close(fd)
                raise self._refuse(owner) from None
            try:  # the file we locked must still be the one at the path (not unlinked by a releaser)
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            owner = _parse(os.read(fd, 65536).decode(errors="replace"))
            if owner is not None:  # a file nobody locks: its writer died without releasing
                self._warn_takeover(owner)
            os.lseek(fd, 0, os.SEEK_SET)
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps(self._me).encode())
            os.fsync(fd)
            self._fd = fd
            return
        raise WorkdirLocked(f"could not take the lock {self.path}: it keeps changing hands")

    # ---- remote: the file is the lock ----
    def _read_remote(self) -> dict | None:
        import tensorflow as tf

        try:
            with tf.io.gfile.GFile(self.path) as f:
                return _parse(f.read())
        except tf.errors.NotFoundError:
            return None

    def _acquire_remote(self) -> None:
        import tensorflow as tf

        owner = self._read_remote()
        if owner is not None:
            pid = owner.get("pid")
            stale = (
                owner.get("host") == self._me["host"]
                and isinstance(pid, int)
                and pid != self._me["pid"]
                and not _pid_alive(pid)
            )
            if not stale:
                raise self._refuse(owner)
            self._warn_takeover(owner)
            tf.io.gfile.remove(self.path)  # not overwritten: some file systems (ram://) append on "w"
        tf.io.gfile.makedirs(self.workdir)
        with tf.io.gfile.GFile(self.path, "w") as f:
            f.write(json.dumps(self._me))

    # ---- public ----
    def acquire(self) -> WorkdirLock:
        if self.held:
            return self
        if self._remote:
            self._acquire_remote()
        else:
            self._acquire_local()
        self.held = True
        return self

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        if self._remote:
            import tensorflow as tf

            owner = self._read_remote()
            if owner and owner.get("pid") == self._me["pid"] and owner.get("host") == self._me["host"]:
                tf.io.gfile.remove(self.path)
            return
        try:
            os.unlink(self.path)  # while still locked: a waiter re-checks the inode (see _acquire_local)
        except FileNotFoundError:
            pass
        os.close(self._fd)
        self._fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
