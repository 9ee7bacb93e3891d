"""Files in directories agent code could write, handled without trusting any name in them.

Agent code (an experiment in its run dir, the plot command in plots/, an artifact the referee
loads in the referee's out dir) can leave a symlink, a hard link, a FIFO or a device where the
orchestrator later writes, copies, reads or hashes a file. The orchestrator runs unsandboxed:
following a planted `run_1/referee.json -> ../journal.jsonl` would copy the referee's JSON over
the journal, a link to `~/.aws/credentials` would carry a key into a prompt, and a FIFO would
block the loop forever. So every such access goes through here:

- a directory is opened O_DIRECTORY | O_NOFOLLOW (its last component: the caller's own path
  above it is trusted; resolve a user-given one first) and names are opened relative to that
  descriptor (openat), never re-resolved as paths;
- a file is opened O_NOFOLLOW | O_NONBLOCK (a FIFO neither blocks nor is read) and checked
  with fstat before a byte is read or truncated: anything but a regular file with a single
  link raises Planted, whose message is one line;
- `planted(dir)` lists every entry under a directory that is not a plain file or directory,
  so the verdict can name it.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from contextlib import suppress
from pathlib import Path
from typing import Any, BinaryIO

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
FILE_FLAGS = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
CHUNK = 1 << 20


class Planted(OSError):
    """A name holds a symlink, hard link, FIFO, device or socket; never followed."""


def kind(st: os.stat_result) -> str | None:
    """What an lstat result is when it is not a plain file or directory; None when it is."""
    mode = st.st_mode
    if stat.S_ISDIR(mode) or (stat.S_ISREG(mode) and st.st_nlink == 1):
        return None
    if stat.S_ISREG(mode):
        return "hard link"
    kinds = {stat.S_ISLNK: "symlink", stat.S_ISFIFO: "FIFO", stat.S_ISSOCK: "socket"}
    return next((name for test, name in kinds.items() if test(mode)), "device")


def planted(directory: Path) -> list[tuple[str, str]]:
    """(relative posix path, kind) of every entry under `directory` that is not a plain file
    or directory; symlinked directories are listed, not entered."""
    root = Path(directory)
    found = []
    for parent, dirs, files in os.walk(root):
        for name in sorted(dirs + files):
            path = Path(parent) / name
            with suppress(FileNotFoundError):
                if what := kind(path.lstat()):
                    found.append((path.relative_to(root).as_posix(), what))
    return sorted(found)


def write_bytes(directory: Path, name: str, data: bytes) -> Path:
    """Write `data` to `directory/name`, refusing anything there but a plain file."""
    with open_write(directory, name) as out:
        out.write(data)
    return Path(directory) / name


def write_text(directory: Path, name: str, text: str) -> Path:
    return write_bytes(directory, name, text.encode())


def open_write(directory: Path, name: str) -> BinaryIO:
    """`directory/name` opened for writing from its start (created, or emptied once checked)."""
    if Path(name).name != name or name in ("", ".", ".."):
        raise ValueError(f"{name!r} must be a plain file name")  # a/b would follow a
    dir_fd = _open_dir(Path(directory))
    try:
        where = f"{Path(directory).name}/{name}"
        fd = _open_checked(name, os.O_WRONLY | os.O_CREAT, dir_fd, where)
    finally:
        os.close(dir_fd)
    os.ftruncate(fd, 0)  # only now: truncating first would empty a hard-linked target
    return os.fdopen(fd, "wb")


def read_bytes(path: Path) -> bytes:
    """The bytes of a plain file at `path` (its last component is not followed)."""
    with os.fdopen(_open_file(Path(path)), "rb") as f:
        return f.read()


def read_text(path: Path) -> str:
    return read_bytes(path).decode()


def read_json(path: Path) -> Any:
    """A JSON file read through read_bytes (never through a link); json's errors pass through."""
    return json.loads(read_bytes(path))


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with os.fdopen(_open_file(Path(path)), "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def copy_in(source: Path, directory: Path, name: str) -> Path:
    """Copy the plain file `source` to `directory/name`; neither end may be a planted link."""
    with os.fdopen(_open_file(Path(source)), "rb") as src, open_write(directory, name) as out:
        while chunk := src.read(CHUNK):
            out.write(chunk)
    return Path(directory) / name


def is_regular(path: Path) -> bool:
    """Whether `path` is a plain file (lstat: a link to one is not)."""
    try:
        st = Path(path).lstat()
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and kind(st) is None


def regular_files(directory: Path) -> list[str]:
    """Relative posix paths of the plain files under `directory` (links are not followed)."""
    root = Path(directory)
    return sorted(
        (Path(parent) / name).relative_to(root).as_posix()
        for parent, _, files in os.walk(root)
        for name in files
        if is_regular(Path(parent) / name)
    )


def _open_dir(directory: Path) -> int:
    try:
        return os.open(directory, DIR_FLAGS)
    except OSError:
        if directory.is_symlink():
            raise Planted(f"{directory.name}/ is a symlink; not followed") from None
        raise


def _open_file(path: Path) -> int:
    return _open_checked(path, os.O_RDONLY, None, f"{path.parent.name}/{path.name}")


def _open_checked(target: str | Path, flags: int, dir_fd: int | None, where: str) -> int:
    """Open `target` (relative to `dir_fd` when given) and fstat it; Planted unless plain."""
    try:
        fd = os.open(target, flags | FILE_FLAGS, 0o644, dir_fd=dir_fd)
    except OSError:  # ELOOP: a symlink; ENXIO: a FIFO nobody reads; name what it is
        if what := _kind_at(target, dir_fd):
            raise Planted(f"{where} is a {what}; not followed") from None
        raise
    st = os.fstat(fd)
    what = kind(st)
    if what or not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise Planted(f"{where} is a {what or 'directory'}; not followed")
    return fd


def _kind_at(target: str | Path, dir_fd: int | None) -> str | None:
    try:
        return kind(os.stat(target, dir_fd=dir_fd, follow_symlinks=False))
    except OSError:
        return None


def file_digests(directory: Path) -> dict[str, str]:
    """sha256 of every plain file under `directory` (relative posix path -> hex digest); links,
    FIFOs and devices are skipped, never followed or opened."""
    root = Path(directory)
    return {path: sha256(root / path) for path in regular_files(root)}
