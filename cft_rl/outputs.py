"""Writing results so that none is half-written, lost or silently overwritten: one idiom for every job.

``annotate``, ``eval`` and ``pipeline`` all keep their results in plain folders that a rerun resumes
in. Two rules make that safe, and they live here so that the jobs share them:

- :func:`write_atomic`: a file or folder is written under a temporary sibling name and renamed into
  place, so a kill leaves the old version or the new one, never a mix.
- :func:`supersede`: results made with other settings are never overwritten; they are moved to
  ``root/.superseded/<name>.<key>/``, where ``key`` identifies the settings that made them.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

SUPERSEDED = ".superseded"


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def write_atomic(path: str | Path, write: Callable[[Path], object]) -> Path:
    """``write(tmp)`` then rename ``tmp`` to ``path``; ``write`` may make a file or a folder.

    A folder cannot be renamed over a non-empty one, so the old folder is first renamed aside and
    deleted only once the new one is in place: a kill at any point leaves a complete version under
    ``path`` or under the aside name, and the leftovers are cleared by the next write.
    """
    path = Path(path)
    tmp, old = path.with_name(f".{path.name}.tmp"), path.with_name(f".{path.name}.old")
    _remove(tmp)  # left by a write that was killed
    path.parent.mkdir(parents=True, exist_ok=True)
    write(tmp)
    if tmp.is_dir() and path.exists():
        _remove(old)
        path.rename(old)
        tmp.rename(path)
        _remove(old)
    else:
        os.replace(tmp, path)
    return path


def write_json(path: str | Path, data) -> Path:
    """``data`` as indented JSON (values JSON cannot hold written as strings), atomically."""
    text = json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n"
    return write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def settings_key(settings: dict) -> str:
    """A short, stable name for a settings mapping (the ``key`` of :func:`supersede`)."""
    blob = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def supersede(root: str | Path, paths: Sequence[Path] | Path, name: str, key: str) -> Path:
    """Move results made with other settings out of the way, keeping them; returns where they went.

    A single folder (a pipeline stage) becomes ``root/.superseded/<name>.<key>`` itself; several
    paths (an eval benchmark's files) move into that folder. ``name`` may hold slashes (stage names):
    they become ``__``. A target that already exists is never replaced: the new one gets a number.
    """
    root = Path(root)
    base = root / SUPERSEDED / f"{name.replace('/', '__')}.{key}"
    target, n = base, 1
    while target.exists():
        target, n = base.with_name(f"{base.name}.{n}"), n + 1
    target.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(paths, Path):
        paths.rename(target)
        return target
    target.mkdir()
    for path in paths:
        if path.exists():
            path.rename(target / path.name)
    return target
