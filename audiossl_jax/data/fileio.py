"""File access for prep: local paths through `os`, URLs (`gs://`, `ram://`, any `scheme://`) through
`tf.io.gfile`.

Local paths never import TensorFlow, so prep's worker processes stay light; a remote path imports
it on first use. `ram://` is TensorFlow's in-memory file system: it lives in one process, so only
in-process readers (workers=1, Beam's multi_threading mode) see what that process wrote.
"""

from __future__ import annotations

import io
import os
import posixpath


def is_remote(path: str) -> bool:
    return "://" in path


def _gfile():
    import tensorflow as tf

    return tf.io.gfile


def join(base: str, *parts: str) -> str:
    return posixpath.join(base, *parts) if is_remote(base) else os.path.join(base, *parts)


def dirname(path: str) -> str:
    return posixpath.dirname(path) if is_remote(path) else os.path.dirname(path)


def abspath(path: str) -> str:
    """The absolute form of a local path; a URL as given."""
    return path if is_remote(path) else os.path.abspath(path)


def isabs(path: str) -> bool:
    return is_remote(path) or os.path.isabs(path)


def exists(path: str) -> bool:
    return _gfile().exists(path) if is_remote(path) else os.path.exists(path)


def isdir(path: str) -> bool:
    return _gfile().isdir(path) if is_remote(path) else os.path.isdir(path)


def isfile(path: str) -> bool:
    if is_remote(path):
        return _gfile().exists(path) and not _gfile().isdir(path)
    return os.path.isfile(path)


def getsize(path: str) -> int:
    return _gfile().stat(path).length if is_remote(path) else os.path.getsize(path)


def read_bytes(path: str) -> bytes:
    if is_remote(path):
        with _gfile().GFile(path, "rb") as f:
            return f.read()
    with open(path, "rb") as f:
        return f.read()


def read_text(path: str) -> io.StringIO:
    """The file decoded as UTF-8 (a leading BOM dropped), newlines untouched, as csv needs."""
    return io.StringIO(read_bytes(path).decode("utf-8-sig"), newline="")


def makedirs(path: str) -> None:
    if is_remote(path):
        _gfile().makedirs(path)
    else:
        os.makedirs(path, exist_ok=True)


def glob(pattern: str) -> list[str]:
    """Paths matching a pattern whose directory part holds no wildcard (escape it with glob.escape
    for local paths)."""
    if is_remote(pattern):
        return sorted(_gfile().glob(pattern))
    import glob as glob_lib

    return sorted(glob_lib.glob(pattern))


def remove(path: str) -> None:
    if is_remote(path):
        _gfile().remove(path)
    else:
        os.remove(path)


def rename(src: str, dst: str) -> None:
    """Moves src over dst: rename(2) locally (atomic), a copy and a delete on object stores."""
    if is_remote(src) or is_remote(dst):
        _gfile().rename(src, dst, overwrite=True)
    else:
        os.replace(src, dst)


def walk_files(root: str, suffixes: tuple[str, ...] = ()) -> list[str]:
    """Every file below `root`, depth first, directories and names sorted. Remotely, a name ending
    in one of `suffixes` (case-insensitive) is taken to be a file without asking the store, so a
    folder of 2 M clips costs one listing, not 2 M requests; other names are checked."""
    if not is_remote(root):
        found = []
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            found += [os.path.join(dirpath, n) for n in sorted(filenames)]
        return found
    gfile, found = _gfile(), []
    for name in sorted(n.rstrip("/") + ("/" if n.endswith("/") else "") for n in gfile.listdir(root)):
        path = posixpath.join(root, name.rstrip("/"))
        if name.endswith("/") or (not name.lower().endswith(suffixes or ("/",)) and gfile.isdir(path)):
            found += walk_files(path, suffixes)
        else:
            found.append(path)
    return found


def sizes(paths: list[str]) -> list[int]:
    """The size of each file, -1 where it does not exist; remote files are stat-ed 32 at a time
    (one round trip each on an object store)."""

    def size(path: str) -> int:
        try:
            return getsize(path)
        except Exception:  # noqa: BLE001 - OSError locally, tf.errors.NotFoundError remotely
            return -1

    if not any(is_remote(p) for p in paths):
        return [size(p) for p in paths]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(32) as pool:
        return list(pool.map(size, paths))


class FileChecker:
    """`isfile(path)` for many paths: a remote folder is listed once (one request per ~1,000 names)
    instead of one request per file; local paths are checked directly."""

    def __init__(self):
        self._listed: dict[str, set[str]] = {}

    def isfile(self, path: str) -> bool:
        if not is_remote(path):
            return os.path.isfile(path)
        folder, name = posixpath.split(path)
        if folder not in self._listed:
            try:
                self._listed[folder] = {n for n in _gfile().listdir(folder) if not n.endswith("/")}
            except Exception:  # noqa: BLE001 - a missing folder: nothing in it exists
                self._listed[folder] = set()
        return name in self._listed[folder]
