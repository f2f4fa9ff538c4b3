"""Atomic writes: the target changes only when the write finishes; nothing half-written remains."""

import os

import pytest

from dss.atomic import atomic_dir, atomic_file


def test_atomic_file_replaces_on_success_only(tmp_path):
    path = tmp_path / "sub" / "a.json"
    with atomic_file(path) as tmp:
        assert tmp.parent == path.parent and not tmp.exists() and not path.exists()
        tmp.write_text("one")
    assert path.read_text() == "one" and os.listdir(path.parent) == ["a.json"]
    with pytest.raises(RuntimeError), atomic_file(path, fsync=True) as tmp:
        tmp.write_text("half")
        raise RuntimeError
    assert path.read_text() == "one" and os.listdir(path.parent) == ["a.json"]
    with atomic_file(path, fsync=True) as tmp:
        tmp.write_text("two")
    assert path.read_text() == "two"
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's private 0600


def test_atomic_dir_swaps_the_whole_directory(tmp_path):
    out = tmp_path / "export"
    with atomic_dir(out) as tmp:
        assert tmp.is_dir() and not list(tmp.iterdir()) and not out.exists()
        (tmp / "a").write_text("1")
    assert [p.name for p in out.iterdir()] == ["a"]
    with pytest.raises(KeyboardInterrupt), atomic_dir(out) as tmp:
        (tmp / "b").write_text("half")
        raise KeyboardInterrupt
    assert [p.name for p in out.iterdir()] == ["a"] and os.listdir(tmp_path) == ["export"]
    with atomic_dir(out) as tmp:
        (tmp / "b").write_text("2")
    assert [p.name for p in out.iterdir()] == ["b"] and os.listdir(tmp_path) == ["export"]


def test_atomic_dir_keep_existing_discards_the_new_one(tmp_path):
    out = tmp_path / "asset"
    with atomic_dir(out, keep_existing=True) as tmp:
        (tmp / "a").write_text("first")
    with atomic_dir(out, keep_existing=True) as tmp:  # lost a race: the first one stays
        (tmp / "a").write_text("second")
    assert (out / "a").read_text() == "first" and os.listdir(tmp_path) == ["asset"]
