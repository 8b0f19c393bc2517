"""Reading folders and archives: the same files from each, unsafe members refused, damage kept
to the member it hits."""

from __future__ import annotations

import io
import os
import re
import shutil
import tarfile
import zipfile
from pathlib import Path

import pytest

from utkface.data.dataset import prepare
from utkface.runtime import sources
from utkface.runtime.sources import Limits, SourceError, fingerprint, iter_members, unsafe_reason

GOOD = "20_0_0_20170000000000001.jpg.chip.jpg"
GOOD2 = "21_1_1_20170000000000002.jpg.chip.jpg"


def _members(source) -> dict[str, tuple[bytes | None, str | None]]:
    return {m.name: (m.data, m.problem) for m in iter_members(source)}


def _add_bytes(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    archive.addfile(info, io.BytesIO(data))


def _add_special(archive: tarfile.TarFile, name: str, kind: bytes, target: str = "") -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    archive.addfile(info)


def test_folder_tar_and_zip_give_the_same_files(tmp_path, make_faces):
    paths = make_faces(tmp_path / "UTKFace", count=5)
    make_faces(tmp_path / "UTKFace" / "part2", names=[GOOD])
    with tarfile.open(tmp_path / "faces.tar.gz", "w:gz") as archive:
        archive.add(tmp_path / "UTKFace", arcname="UTKFace")
    with zipfile.ZipFile(tmp_path / "faces.zip", "w") as archive:
        for path in sorted((tmp_path / "UTKFace").rglob("*")):
            archive.write(path, path.relative_to(tmp_path).as_posix())

    folder = _members(tmp_path / "UTKFace")
    expected = sorted(p.name for p in paths) + [f"part2/{GOOD}"]
    assert list(folder) == expected  # sorted, files of a folder before its subfolders
    assert folder[paths[0].name] == (paths[0].read_bytes(), None)
    for archive in ("faces.tar.gz", "faces.zip"):
        members = _members(tmp_path / archive)
        assert {name.removeprefix("UTKFace/"): v for name, v in members.items()} == folder
    assert _members(tmp_path / "UTKFace") == folder  # stable across runs


def test_unsafe_tar_members_are_refused_and_nothing_is_written(tmp_path, jpeg_bytes):
    outside = tmp_path / "outside"
    image = jpeg_bytes()
    archive_path = tmp_path / "evil.tar.gz"
    with tarfile.open(archive_path, "w:gz") as archive:
        _add_bytes(archive, f"UTKFace/{GOOD}", image)
        _add_bytes(archive, f"{outside}/{GOOD}", image)  # absolute
        _add_bytes(archive, f"../outside/{GOOD}", image)
        _add_bytes(archive, f"UTKFace/../../outside/{GOOD2}", image)
        _add_special(archive, "UTKFace/22_0_0_2017.jpg", tarfile.SYMTYPE, "/etc/passwd")
        _add_special(archive, "UTKFace/23_0_0_2017.jpg", tarfile.SYMTYPE, f"../outside/{GOOD}")
        _add_special(archive, "UTKFace/24_0_0_2017.jpg", tarfile.LNKTYPE, f"UTKFace/{GOOD}")
        _add_special(archive, "UTKFace/25_0_0_2017.jpg", tarfile.FIFOTYPE)

    members = _members(archive_path)
    assert members.pop(f"UTKFace/{GOOD}") == (image, None)
    problems = {name: problem for name, (data, problem) in members.items()}
    assert all(data is None for data, _ in members.values())
    assert problems == {
        f"{outside}/{GOOD}": "unsafe path in archive (absolute)",
        f"../outside/{GOOD}": "unsafe path in archive (contains '..')",
        f"UTKFace/../../outside/{GOOD2}": "unsafe path in archive (contains '..')",
        "UTKFace/22_0_0_2017.jpg": "link in archive (not followed)",
        "UTKFace/23_0_0_2017.jpg": "link in archive (not followed)",
        "UTKFace/24_0_0_2017.jpg": "link in archive (not followed)",
        "UTKFace/25_0_0_2017.jpg": "not a regular file",
    }

    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    dataset = prepare(archive_path, size=16, out=tmp_path / "cache")
    assert [r.file for r in dataset.records] == [f"UTKFace/{GOOD}"]
    assert {s.file: s.reason for s in dataset.skipped} == problems
    assert not outside.exists() and not (tmp_path.parent / "outside").exists()
    after = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert [p for p in after if p not in before and p.parts[0] != "cache"] == []


def test_unsafe_zip_members_are_refused(tmp_path, jpeg_bytes):
    image = jpeg_bytes()
    archive_path = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive_path, "w") as archive:
        archive.writestr(f"UTKFace/{GOOD}", image)
        archive.writestr(f"/abs/{GOOD}", image)
        archive.writestr(f"../{GOOD}", image)
        archive.writestr(f"UTKFace\\..\\..\\{GOOD}", image)
        archive.writestr(f"C:/Windows/{GOOD}", image)
        link = zipfile.ZipInfo(f"UTKFace/{GOOD2}")
        link.create_system = 3  # Unix, so the mode bits below count
        link.external_attr = 0o120777 << 16  # a symbolic link; its content is the target
        archive.writestr(link, "/etc/passwd")

    members = _members(archive_path)
    assert members.pop(f"UTKFace/{GOOD}") == (image, None)
    assert {name: problem for name, (_, problem) in members.items()} == {
        f"/abs/{GOOD}": "unsafe path in archive (absolute)",
        f"../{GOOD}": "unsafe path in archive (contains '..')",
        f"UTKFace\\..\\..\\{GOOD}": "unsafe path in archive (contains '..')",
        f"C:/Windows/{GOOD}": "unsafe path in archive (absolute)",
        f"UTKFace/{GOOD2}": "link in archive (not followed)",
    }


@pytest.mark.parametrize(
    "name, unsafe",
    [
        ("UTKFace/1_0_0_1.jpg", False),
        ("./UTKFace/1_0_0_1.jpg", False),
        ("..1_0_0_1.jpg", False),  # dots in a name are not a parent folder
        ("/1_0_0_1.jpg", True),
        ("\\\\server\\share\\1_0_0_1.jpg", True),
        ("c:1_0_0_1.jpg", True),
        ("a/../../1_0_0_1.jpg", True),
    ],
)
def test_unsafe_reason(name, unsafe):
    assert (unsafe_reason(name) is not None) == unsafe


def test_a_damaged_zip_member_is_skipped_and_the_rest_read(tmp_path, jpeg_bytes):
    image = jpeg_bytes(size=96)
    clean = tmp_path / "clean.zip"
    with zipfile.ZipFile(clean, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(GOOD, image)
        archive.writestr(GOOD2, image)
    raw = bytearray(clean.read_bytes())
    start = 30 + len(GOOD)  # the first member's compressed data follows its local header
    raw[start + 10 : start + 200] = b"\xff" * 190  # not valid deflate data: zlib.error
    (tmp_path / "damaged.zip").write_bytes(raw)

    encrypted = bytearray(clean.read_bytes())
    encrypted[6] |= 1  # "encrypted" flag in the first local header ...
    encrypted[encrypted.find(b"PK\x01\x02") + 8] |= 1  # ... and in its central directory entry
    (tmp_path / "encrypted.zip").write_bytes(encrypted)

    for archive, reason in (("damaged.zip", "damaged archive member"), ("encrypted.zip", "unread")):
        members = _members(tmp_path / archive)
        assert members[GOOD][0] is None and reason in members[GOOD][1], members[GOOD]
        assert members[GOOD2] == (image, None)


def test_folder_links_special_and_unreadable_files(tmp_path, jpeg_bytes, monkeypatch):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / GOOD2).write_bytes(jpeg_bytes(1))
    root = tmp_path / "UTKFace"
    (root / "inner").mkdir(parents=True)
    (root / GOOD).write_bytes(jpeg_bytes(0))
    (root / "30_0_0_2017.jpg").symlink_to(outside / GOOD2)  # escapes: refused
    (root / "31_0_0_2017.jpg").symlink_to(root / GOOD)  # stays inside: read
    (root / "32_0_0_2017.jpg").symlink_to(root / "missing.jpg")  # dangling
    (root / "linked").symlink_to(outside, target_is_directory=True)
    os.mkfifo(root / "inner" / "33_0_0_2017.jpg")
    (root / "inner" / "34_0_0_2017.jpg").write_bytes(jpeg_bytes(2))

    def fake_open(path, *args, **kwargs):  # root reads anything: fake a permission error
        if Path(path).name == "34_0_0_2017.jpg":
            raise PermissionError(13, "Permission denied")
        return open(path, *args, **kwargs)

    monkeypatch.setattr(sources, "open", fake_open, raising=False)
    members = _members(root)
    assert members == {
        GOOD: (jpeg_bytes(0), None),
        "30_0_0_2017.jpg": (None, "symbolic link pointing outside the folder"),
        "31_0_0_2017.jpg": (jpeg_bytes(0), None),
        "32_0_0_2017.jpg": (None, "not a regular file"),
        "linked": (None, "symbolic link to a folder (not followed)"),
        "inner/33_0_0_2017.jpg": (None, "not a regular file"),
        "inner/34_0_0_2017.jpg": (None, "cannot read file (Permission denied)"),
    }


def test_unreadable_sources_raise_source_error(tmp_path, make_faces):
    with pytest.raises(SourceError, match="no such file"):
        list(iter_members(tmp_path / "missing.tar.gz"))
    with pytest.raises(SourceError, match="no such file"):
        fingerprint(tmp_path / "missing.tar.gz")
    (tmp_path / "notes.txt").write_text("not an archive")
    with pytest.raises(SourceError, match="not a folder"):
        list(iter_members(tmp_path / "notes.txt"))

    make_faces(tmp_path / "faces", count=8, size=128)
    with tarfile.open(tmp_path / "faces.tar.gz", "w:gz") as archive:
        archive.add(tmp_path / "faces", arcname="UTKFace")
    data = (tmp_path / "faces.tar.gz").read_bytes()
    (tmp_path / "cut.tar.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(SourceError, match="damaged archive"):
        list(iter_members(tmp_path / "cut.tar.gz"))


def test_fingerprint_follows_content_changes(tmp_path, make_faces):
    paths = make_faces(tmp_path / "faces", count=3)
    first = fingerprint(tmp_path / "faces")
    assert fingerprint(tmp_path / "faces") == first
    make_faces(tmp_path / "faces", names=[GOOD])
    added = fingerprint(tmp_path / "faces")
    assert added != first
    paths[0].write_bytes(paths[0].read_bytes() + b"\0")
    assert fingerprint(tmp_path / "faces") not in (first, added)

    archive = tmp_path / "faces.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        handle.writestr(GOOD, b"x")
    before = fingerprint(archive)
    with zipfile.ZipFile(archive, "a") as handle:
        handle.writestr(GOOD2, b"y")
    assert fingerprint(archive) != before


# ---------------------------------------------------------------------------------------------
# limits: big members, zip bombs, lying headers, the total


class _Zeros(io.RawIOBase):
    """`size` zero bytes, produced as they are read (nothing that size is ever held)."""

    def __init__(self, size: int):
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        count = min(len(buffer), self.left)
        buffer[:count] = bytes(count)
        self.left -= count
        return count


BIG = 256 * 2**20  # a few hundred MB, generated on the fly, compressed to a few hundred kB


def _write_zeros_member(archive: zipfile.ZipFile, name: str, size: int) -> None:
    with archive.open(name, "w") as handle:
        shutil.copyfileobj(_Zeros(size), handle, 2**22)


def test_a_huge_tar_member_is_skipped_unread_and_the_rest_used(tmp_path, jpeg_bytes):
    path = tmp_path / "big.tar.gz"
    with tarfile.open(path, "w:gz", compresslevel=1) as archive:
        _add_bytes(archive, GOOD, jpeg_bytes(1))
        info = tarfile.TarInfo("30_1_0_20170000000000003.jpg.chip.jpg")
        info.size = BIG
        archive.addfile(info, _Zeros(BIG))
        _add_bytes(archive, GOOD2, jpeg_bytes(2))
    assert path.stat().st_size < 2 * 2**20  # nothing big stored

    dataset = prepare(path, size=16, out=tmp_path / "cache")
    assert [record.file for record in dataset.records] == [GOOD, GOOD2]
    assert [(s.file, s.reason) for s in dataset.skipped] == [
        ("30_1_0_20170000000000003.jpg.chip.jpg", "file too large (256.0 MB, limit 50.0 MB)")
    ]


def test_a_zip_bomb_is_refused_by_its_declared_ratio(tmp_path, jpeg_bytes):
    path = tmp_path / "bomb.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        archive.writestr(GOOD, jpeg_bytes(1))
        _write_zeros_member(archive, "bomb.jpg", 40 * 2**20)  # under the 50 MB cap
        archive.writestr(GOOD2, jpeg_bytes(2))
    members = _members(path)
    assert members[GOOD] == (jpeg_bytes(1), None) and members[GOOD2] == (jpeg_bytes(2), None)
    data, problem = members["bomb.jpg"]
    assert data is None
    pattern = r"zip bomb: [\d.]+ kB would inflate to 40\.0 MB \((\d+) times, limit 100\)"
    assert int(re.fullmatch(pattern, problem).group(1)) > 100


def test_a_zip_member_whose_header_lies_about_its_size_is_read_no_further(tmp_path, jpeg_bytes):
    path = tmp_path / "liar.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        archive.writestr(GOOD, jpeg_bytes(1))
        _write_zeros_member(archive, "liar.jpg", BIG)
    # Rewrite the declared size (local header and central directory) from 256 MB to 1 kB: the
    # ratio looks harmless and the size is under the cap.
    raw = bytearray(path.read_bytes())
    for signature, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        start = 0
        while (start := raw.find(signature, start)) != -1:
            if int.from_bytes(raw[start + offset : start + offset + 4], "little") == BIG:
                raw[start + offset : start + offset + 4] = (1024).to_bytes(4, "little")
            start += 4
    path.write_bytes(bytes(raw))
    assert zipfile.ZipFile(path).getinfo("liar.jpg").file_size == 1024

    members = _members(path)
    assert members[GOOD] == (jpeg_bytes(1), None)
    data, problem = members["liar.jpg"]
    assert data is None and problem.startswith("damaged archive member (Bad CRC-32")
    # zipfile itself stops at the declared size; any reader that does not is cut at the cap:
    reader = sources._Reader(Limits(member_bytes=2048))
    asked = []
    member = reader.member("liar.jpg", 1024, lambda n: asked.append(n) or bytes(n))
    assert asked == [2049] and member.data is None
    assert member.problem == "file too large (over 2.0 kB, its header said 1.0 kB)"


def test_the_total_read_limit_and_a_small_file_cap(tmp_path, make_faces):
    make_faces(tmp_path / "faces", count=4)
    sizes = {path.name: path.stat().st_size for path in sorted((tmp_path / "faces").iterdir())}
    first = list(sizes.values())
    limits = Limits(total_bytes=first[0] + first[1] + first[2] - 1)  # the third does not fit
    found = {m.name: m.problem for m in iter_members(tmp_path / "faces", limits)}
    limit = f"{limits.total_bytes / 1024:.1f} kB"
    assert list(found.values()) == [None, None] + [f"total read limit reached ({limit} read)"] * 2
    capped = Limits(member_bytes=min(first))
    found = {m.name: m.problem for m in iter_members(tmp_path / "faces", capped)}
    assert {name for name, problem in found.items() if problem is None} == {
        name for name, size in sizes.items() if size == min(first)
    }
