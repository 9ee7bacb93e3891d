"""Source code in three languages, from files every lab install already has.

  python  the standard library of the running interpreter (tests excluded)
  c       CPython's C headers, plus the .c files shipped inside numpy and scikit-learn
  cpp     the C++ headers shipped inside the pinned torch wheel (ATen, c10, torch)

Files are located without importing the packages, read in sorted order, and returned as
[relative path, text] pairs so the split into probe files and corpus files is by file.
"""

from __future__ import annotations

import importlib.util
import random
import sysconfig
from pathlib import Path

SEED = 0
# Enough for the probes' reserve and the corpus, without reading all 1M lines of torch headers.
MAX_CHARS_PER_LANGUAGE = {"python": 40_000_000, "c": 10_000_000, "cpp": 4_000_000}


def _package_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _python_files() -> list[tuple[Path, Path]]:
    root = Path(sysconfig.get_paths()["stdlib"])
    # encodings/ is dozens of generated, near-identical codec tables: not representative code
    skip = {"site-packages", "test", "tests", "idle_test", "lib2to3", "encodings"}
    files = [p for p in root.rglob("*.py") if not skip & set(p.relative_to(root).parts)]
    return [(root, p) for p in files]


def _c_files() -> list[tuple[Path, Path]]:
    include = Path(sysconfig.get_paths()["include"])
    pairs = [(include.parent, p) for p in include.rglob("*.h")]
    for name in ("numpy", "sklearn"):
        root = _package_dir(name)
        if root is not None:
            pairs += [(root.parent, p) for p in root.rglob("*.c")]
    return pairs


def _cpp_files() -> list[tuple[Path, Path]]:
    root = _package_dir("torch")
    if root is None:
        return []
    include = root / "include"
    headers = [p for part in ("ATen", "c10", "torch") for p in (include / part).rglob("*.h")]
    # ATen/ops holds thousands of near-identical generated headers: not representative C++
    return [(root.parent, p) for p in headers if "ops" not in p.relative_to(include).parts]


_FINDERS = {"python": _python_files, "c": _c_files, "cpp": _cpp_files}
LANGUAGES = tuple(_FINDERS)


def code_files(language: str) -> list[list[str]]:
    """[relative path, text] for one language: a seeded sample capped in size, sorted by path."""
    pairs = sorted(_FINDERS[language](), key=lambda rp: str(rp[1].relative_to(rp[0])))
    random.Random(SEED).shuffle(pairs)  # so the size cap samples all folders, not the first
    files, total = [], 0
    for root, path in pairs:
        text = path.read_text(encoding="utf-8", errors="replace")
        if not text.strip():
            continue
        files.append([str(path.relative_to(root)), text])
        total += len(text)
        if total >= MAX_CHARS_PER_LANGUAGE[language]:
            break
    return sorted(files)


def windows(text: str, lines: int) -> list[str]:
    """Consecutive non-overlapping windows of `lines` non-blank lines."""
    kept = [line for line in text.splitlines() if line.strip()]
    return ["\n".join(kept[i : i + lines]) for i in range(0, len(kept) - lines + 1, lines)]
