"""`utkface cache list|clean`: the caches `prepare` built, with their sizes and settings; removal
by name or all, never of anything else, and never leaving a half-deleted cache in place."""

from __future__ import annotations

import os

import pytest

from utkface.apps.cli import main
from utkface.data import caches
from utkface.data import dataset as data
from utkface.runtime.errors import OptionError


@pytest.fixture
def two_caches(face_folder, tmp_path):
    root = tmp_path / "caches"
    small = data.prepare(face_folder, size=16, out=root)
    large = data.prepare(face_folder, size=24, out=root)
    (root / "notes").mkdir()  # not a cache: no meta.json
    (root / ".UTKFace-16px-building.x1").mkdir()  # a prepare still building
    return root, small, large


def test_list_shows_each_cache_with_its_size_and_settings(two_caches, face_folder, capsys):
    root, small, large = two_caches
    found = caches.list_caches(root)
    assert [cache.path for cache in found] == sorted([small.cache_dir, large.cache_dir])
    for cache, dataset, side in zip(found, (small, large), (16, 24)):
        files = [p for p in dataset.cache_dir.iterdir()]
        assert cache.bytes == sum(p.stat().st_size for p in files)
        assert cache.bytes > 24 * side * side * 3  # the images themselves
        assert (cache.size, cache.used, cache.source) == (side, 24, str(face_folder.resolve()))
    assert main(["cache", "list", "--dir", str(root)]) == 0
    printed = capsys.readouterr()
    assert [line.split()[0] for line in printed.out.splitlines()] == [c.path.name for c in found]
    assert " 16 px      24 images" in printed.out and printed.err.startswith("2 caches, ")


def test_clean_removes_the_named_caches_and_nothing_else(two_caches, capsys):
    root, small, large = two_caches
    assert main(["cache", "clean", small.cache_dir.name, "--dir", str(root)]) == 0
    assert capsys.readouterr().out.startswith(f"removed {small.cache_dir} (")
    assert sorted(p.name for p in root.iterdir()) == sorted(
        [large.cache_dir.name, "notes", ".UTKFace-16px-building.x1"]
    )
    with pytest.raises(OptionError, match=f"no cache called nope; caches: {large.cache_dir.name}"):
        caches.remove_caches(["nope", large.cache_dir.name], root)
    assert large.cache_dir.is_dir()  # an unknown name: nothing removed
    assert main(["cache", "clean", "--dir", str(root)]) == 2  # neither names nor --all
    assert main(["cache", "clean", "--all", "--dir", str(root)]) == 0
    assert sorted(p.name for p in root.iterdir()) == [".UTKFace-16px-building.x1", "notes"]


def test_a_removal_is_all_or_nothing_and_a_new_prepare_rebuilds(
    two_caches, face_folder, monkeypatch
):
    root, small, _ = two_caches
    seen = []

    def rmtree(path):  # what a prepare starting in the middle of the removal would find
        seen.append((small.cache_dir.exists(), path.name.startswith(".removing.")))
        raise OSError("disk went away")

    monkeypatch.setattr(caches.shutil, "rmtree", rmtree)
    with pytest.raises(OSError):
        caches.remove_caches([small.cache_dir.name], root)
    assert seen == [(False, True)]  # the cache's name was gone before any file was deleted
    assert small.cache_dir.name not in [c.path.name for c in caches.list_caches(root)]
    monkeypatch.undo()
    again = data.prepare(face_folder, size=16, out=root)
    assert again.cache_dir == small.cache_dir and len(again.records) == 24
    assert os.path.isfile(again.cache_dir / "images.npy")
