"""maas.localfs answers like pyarrow's LocalFileSystem for every call the registry, key store and
audit log make: the same tree, asked both ways, gives the same answers and the same errors."""

from __future__ import annotations

from pathlib import Path

import pyarrow.fs as pafs
import pytest

from maas.localfs import FileType, LocalFiles, list_entries


@pytest.fixture
def tree(tmp_path: Path) -> str:
    (tmp_path / "m" / "1" / "variables").mkdir(parents=True)
    (tmp_path / "m" / "1" / "metadata.json").write_bytes(b"{}")
    (tmp_path / "m" / "1" / "variables" / "data").write_bytes(b"x" * 10)
    (tmp_path / "m" / "2").mkdir()
    return str(tmp_path)


def _shape(infos) -> set[tuple[str, int, int | None]]:
    return {(i.path, int(i.type), i.size) for i in infos}


@pytest.mark.parametrize("rel", ["m", "m/1/metadata.json", "m/1/variables/data", "missing",
                                 "m/1/metadata.json/x"])
def test_file_info_matches_pyarrow(tree: str, rel: str) -> None:
    path = f"{tree}/{rel}"
    ours, theirs = LocalFiles().get_file_info(path), pafs.LocalFileSystem().get_file_info(path)
    assert (ours.type, ours.size, ours.base_name) == (theirs.type, theirs.size, theirs.base_name)
    if ours.type != FileType.NotFound:
        assert ours.mtime_ns == theirs.mtime_ns


@pytest.mark.parametrize("recursive", [False, True])
def test_listing_matches_pyarrow(tree: str, recursive: bool) -> None:
    ours = list_entries(LocalFiles(), f"{tree}/m", recursive=recursive)
    theirs = list_entries(pafs.LocalFileSystem(), f"{tree}/m", recursive=recursive)
    assert _shape(ours) == _shape(theirs) and len(ours) == len(theirs)


def test_listing_a_missing_directory_fails_like_pyarrow_unless_allowed(tree: str) -> None:
    for fs in (LocalFiles(), pafs.LocalFileSystem()):
        with pytest.raises(FileNotFoundError):
            list_entries(fs, f"{tree}/nope")
        assert list_entries(fs, f"{tree}/nope", allow_not_found=True) == []


def test_writes_read_back_and_need_their_directory(tree: str) -> None:
    fs = LocalFiles()
    with pytest.raises(FileNotFoundError):  # pyarrow does not create parents either
        fs.open_output_stream(f"{tree}/new/a.json")
    fs.create_dir(f"{tree}/new/deeper", recursive=True)
    fs.create_dir(f"{tree}/new/deeper", recursive=True)  # exists already: fine, as in pyarrow
    with fs.open_output_stream(f"{tree}/new/deeper/a.tmp") as out:
        out.write(b"hello")
    fs.move(f"{tree}/new/deeper/a.tmp", f"{tree}/new/deeper/a.json")
    with fs.open_input_stream(f"{tree}/new/deeper/a.json") as stream:
        assert stream.read() == b"hello"
    with pytest.raises(FileNotFoundError):
        fs.open_input_stream(f"{tree}/new/deeper/a.tmp")


def test_copy_tree_copies_every_file(tree: str, tmp_path: Path) -> None:
    LocalFiles().copy_tree(f"{tree}/m/1", str(tmp_path / "copy"))
    assert (tmp_path / "copy" / "variables" / "data").read_bytes() == b"x" * 10
    assert (tmp_path / "copy" / "metadata.json").read_bytes() == b"{}"
