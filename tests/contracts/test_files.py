"""contracts/files.py: the one write-then-rename mechanism every local writer uses."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from contracts import files
from contracts.files import link_atomic, link_or_copy, replaced_atomically, write_atomic


def test_a_failed_write_leaves_the_old_file_and_no_temporary_file(tmp_path):
    target = tmp_path / "batch.jsonl"
    target.write_bytes(b"old\n")
    with pytest.raises(RuntimeError):
        with replaced_atomically(target) as tmp:
            tmp.write_bytes(b"half of the new")
            raise RuntimeError("writer failed")
    assert target.read_bytes() == b"old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["batch.jsonl"]


def test_a_write_makes_the_folder_and_replaces_the_file_whole(tmp_path):
    target = tmp_path / "a" / "b" / "file.bin"
    write_atomic(target, b"first")
    write_atomic(target, b"second", fsync=False)
    assert target.read_bytes() == b"second"
    assert sorted(p.name for p in target.parent.iterdir()) == ["file.bin"]


def test_link_or_copy_copies_where_links_are_not_possible(tmp_path, monkeypatch):
    source = tmp_path / "source.parquet"
    source.write_bytes(b"mart rows")
    link_or_copy(source, tmp_path / "linked.parquet")
    assert os.path.samefile(source, tmp_path / "linked.parquet")

    def no_links(src, dst):
        raise OSError("links not allowed here")

    monkeypatch.setattr(files.os, "link", no_links)
    link_or_copy(source, tmp_path / "copied.parquet")
    assert (tmp_path / "copied.parquet").read_bytes() == b"mart rows"
    assert not os.path.samefile(source, tmp_path / "copied.parquet")


def test_link_atomic_replaces_an_existing_target(tmp_path):
    source, target = tmp_path / "new.parquet", tmp_path / "run" / "data.parquet"
    source.write_bytes(b"new run")
    target.parent.mkdir()
    target.write_bytes(b"old run")
    link_atomic(source, target)
    assert os.path.samefile(source, target)
    assert sorted(p.name for p in Path(target.parent).iterdir()) == ["data.parquet"]
