"""Cache helpers: location (a training tree and a sealed one), all-or-nothing writes, one
builder at a time, and the move of an old cache's eval data into the sealed tree."""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path

import pytest

from saelab.cache import (
    atomic_dir,
    atomic_write,
    cache_dir,
    file_lock,
    read_json,
    sealed_dir,
    sealed_root,
    write_json,
)
from saelab.data import BUILD_VERSION
from saelab.prepare import seal_old_cache


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
    assert "0.1 GB free" in err and "activations (1,100,000 tokens x d_model 640" in err
    assert not (tmp_cache / "models").exists()


def test_an_old_cache_moves_its_eval_data_to_the_sealed_tree(tmp_cache: Path) -> None:
    """A cache from before the split: eval sets, their sources and the eval cache move (merged
    into what the sealed tree already holds); the training corpora stay; a second run is free."""
    data = tmp_cache / "data" / f"offline-v{BUILD_VERSION}"
    old = [data / "probing.json", data / "probing.json.sha256", data / "bigbench.json"]
    old += [tmp_cache / "data" / "downloads" / "bigbench.tar.gz"]
    old += [tmp_cache / "evals" / "residuals" / "a.safetensors", tmp_cache / "evals" / "w.json"]
    kept = data / "corpus-offline-mix.json"
    for path in [*old, kept]:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(path.name)
    already = sealed_root() / "evals" / "residuals" / "b.safetensors"
    already.parent.mkdir(parents=True)
    already.write_text("b")
    assert seal_old_cache() == len(old)
    for path in old:
        moved = sealed_root() / path.relative_to(tmp_cache)
        assert not path.exists() and moved.read_text() == path.name
    assert kept.read_text() == kept.name and already.read_text() == "b"
    assert seal_old_cache() == 0


def test_the_sealed_tree_follows_the_cache_root_unless_named(
    tmp_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sibling, never inside the training tree: a read allow-list can grant one alone."""
    assert sealed_root() == Path(f"{tmp_cache}-sealed")
    assert sealed_dir("evals") == Path(f"{tmp_cache}-sealed") / "evals"
    monkeypatch.setenv("SAELAB_SEALED", str(tmp_path / "elsewhere"))
    assert sealed_dir("x") == tmp_path / "elsewhere" / "x"
