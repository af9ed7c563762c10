"""sha256 helpers and the SHA256SUMS file (sha256sum's format, sorted by path)."""

from __future__ import annotations

import hashlib
import os


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_sha256sums(root: str, rel_paths, out_name: str = "SHA256SUMS") -> str:
    """Writes `<sha256>  <path>` lines (paths relative to root, sorted) to root/out_name."""
    lines = [f"{sha256_file(os.path.join(root, p))}  {p}\n" for p in sorted(rel_paths)]
    out = os.path.join(root, out_name)
    with open(out, "w") as f:
        f.writelines(lines)
    return out


def read_sha256sums(path: str) -> dict[str, str]:
    out = {}
    with open(path) as f:
        for line in f:
            digest, rel = line.rstrip("\n").split("  ", 1)
            out[rel] = digest
    return out
