"""Cache helpers: location, all-or-nothing writes, one builder at a time."""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path

import pytest

from saelab.cache import atomic_dir, atomic_write, cache_dir, file_lock, read_json, write_json


def test_cache_dir_honours_env(tmp_cache: Path) -> None:
    path = cache_dir("activations", "x")
    assert path == tmp_cache / "activations" / "x" and path.is_dir()


def test_failed_atomic_write_leaves_old_content_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "f.json"
    write_json(target, {"v": 1})

    def crash(tmp: Path) -> None:
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, crash)
    with pytest.raises(OSError, match="disk full"):
        atomic_dir(tmp_path / "d", lambda tmp: crash(tmp / "inner"))
    assert read_json(target) == {"v": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.json"]


def _append_under_lock(path: str, barrier) -> None:
    barrier.wait()  # both processes reach the lock together, so without it they would interleave
    with file_lock(Path(path)):
        with open(path, "a") as f:
            f.write("start\n")
        time.sleep(0.2)
        with open(path, "a") as f:
            f.write("end\n")


def test_file_lock_serializes_processes(tmp_path: Path) -> None:
    log = tmp_path / "log.txt"
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=_append_under_lock, args=(str(log), barrier)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=30)
    assert log.read_text().split() == ["start", "end", "start", "end"]


def test_a_full_disk_is_refused_before_any_build(tmp_cache, monkeypatch, capsys):
    import collections

    from saelab import prepare
    from saelab.cache import SaelabError

    with pytest.raises(
        SaelabError,
        match=r"GB free under .* need 1000.0 GB \(activations 1000.0 GB\).* SAELAB_CACHE",
    ) as err:
        prepare.check_disk_space({"activations": 10**12})
    assert "\n" not in str(err.value)
    prepare.check_disk_space({"activations": 0})
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(prepare.shutil, "disk_usage", lambda _: usage(10**9, 10**9, 10**8))
    assert prepare.main([]) == 2  # one line on stderr, exit 2, nothing built
    err = capsys.readouterr().err
    assert "0.1 GB free" in err and "activations (300,000 tokens x d_model 640" in err
    assert not (tmp_cache / "models").exists()
