"""The dataset caches `prepare` leaves behind: list them, remove them.

    utkface cache list                 # every cache under $UTKFACE_CACHE or ~/.cache/utkface
    utkface cache clean NAME [NAME...]  # or --all

A cache is a folder with a complete `meta.json` (written last by `prepare`); nothing else in
the cache folder is listed or touched, nor the hidden folders of a `prepare` still building.
Removal first renames the folder to a hidden name (atomic), so a `prepare` starting meanwhile
sees no cache and builds a new one, never a half-deleted one; then the renamed folder is
deleted. A process that already has `images.npy` memory-mapped keeps reading it (POSIX keeps
an unlinked file's data until it is closed).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from utkface.data.dataset import default_cache
from utkface.runtime.errors import OptionError


@dataclass(frozen=True)
class CacheInfo:
    path: Path
    bytes: int  # on disk, all files
    source: str  # the data it was prepared from
    size: int  # image side in pixels
    used: int  # images in it
    created: float  # time meta.json was written (seconds since the epoch)

    def row(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(self.created))
        return (
            f"{self.path.name:40s} {self.bytes / 2**20:9.1f} MB {self.size:4d} px "
            f"{self.used:7d} images  {when}  {self.source}"
        )


def list_caches(root: str | os.PathLike | None = None) -> list[CacheInfo]:
    """The complete caches directly under `root` (default: the default cache folder), by name."""
    root = Path(root) if root is not None else default_cache()
    if not root.is_dir():
        return []
    caches = []
    for folder in sorted(root.iterdir()):
        meta = _meta(folder)
        if meta is None:
            continue
        files = [path for path in folder.rglob("*") if path.is_file()]
        caches.append(
            CacheInfo(
                path=folder,
                bytes=sum(path.stat().st_size for path in files),
                source=str(meta.get("source", "?")),
                size=int(meta.get("size", 0)),
                used=int(meta.get("used", 0)),
                created=(folder / "meta.json").stat().st_mtime,
            )
        )
    return caches


def remove_caches(
    names: list[str] | None = None, root: str | os.PathLike | None = None
) -> list[CacheInfo]:
    """Remove the caches called `names` (all of them when None) under `root`; returns what was
    removed. An unknown name is an error and then nothing is removed."""
    caches = {cache.path.name: cache for cache in list_caches(root)}
    if names is not None:
        unknown = sorted(set(names) - set(caches))
        if unknown:
            known = ", ".join(caches) or "none"
            raise OptionError(f"no cache called {', '.join(unknown)}; caches: {known}")
        caches = {name: caches[name] for name in names}
    for cache in caches.values():
        doomed = Path(
            tempfile.mkdtemp(prefix=f".removing.{cache.path.name}.", dir=cache.path.parent)
        )
        os.replace(cache.path, doomed / cache.path.name)  # atomic: whole cache or none
        shutil.rmtree(doomed)
    return list(caches.values())


def _meta(folder: Path) -> dict | None:
    """The `meta.json` of a complete cache folder, else None."""
    if folder.name.startswith(".") or not folder.is_dir():
        return None
    try:
        meta = json.loads((folder / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) and "fingerprint" in meta else None
