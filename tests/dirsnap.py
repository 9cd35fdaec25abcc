"""Snapshot every byte under a directory, to show that a refused command touched nothing."""

from __future__ import annotations

import hashlib
from pathlib import Path


def snapshot(root: str | Path) -> dict[str, str] | None:
    """{relative path: sha256 of its bytes (or 'dir')} for everything under `root`; None if absent.

    A plain file `root` is snapshot as {'.': sha256}.
    """
    root = Path(root)
    if not root.exists():
        return None
    if root.is_file():
        return {".": hashlib.sha256(root.read_bytes()).hexdigest()}
    out = {}
    for path in sorted(root.rglob("*")):
        key = str(path.relative_to(root))
        out[key] = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return out
