"""A report's directory is replaced whole, never edited in place: every file of a command is
written into a fresh directory beside ``--out``, and only when all of them are written is that
directory swapped in (an atomic exchange where the OS has one, ``renameat2(RENAME_EXCHANGE)`` on
Linux; two renames elsewhere). A command killed part-way, or one that fails, leaves the previous
report exactly as it was (and no new directory where there was none).

A manifest (``.gradcheck-manifest.json``) lists the files gradcheck wrote. Everything else in the
directory is the user's: it is carried into the new directory (hard links, so nothing is copied,
and the originals stay where they are until the swap), and never deleted. Where a swap would be
wrong (``--out`` holds the working directory; it holds others' files and no manifest, so it is
not gradcheck's to replace, say a downloads folder a sent report.json lies in; or it holds
thousands of other files), the files are moved in one by one instead, the page and the record
last, and a note says so.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from ..errors import OutputError
from .files import _umask, first_missing

MANIFEST = ".gradcheck-manifest.json"
#: a directory holding more entries of the user's than this is written in place, not swapped
MAX_CARRIED = 2000
_RENAME_EXCHANGE = 2


@dataclass
class Stage:
    """Where a command writes (``path``), where it lands (``out``), and how it landed."""

    path: Path
    out: Path
    notes: list[str] = field(default_factory=list)


def _fail(out: Path, exc: OSError) -> OutputError:
    return OutputError(f"cannot write to output directory {str(out)!r}: "
                       f"{exc.strerror or exc}")


def written_by_gradcheck(out: Path) -> set[str]:
    """The names the manifest in ``out`` lists (none without a readable manifest: then every
    file there counts as the user's)."""
    try:
        names = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return set()
    if not isinstance(names, list):
        return set()
    return {n for n in names if isinstance(n, str) and n and "/" not in n and n not in (".", "..")}


def _others(out: Path, staged_names: set[str]) -> list[str]:
    if not out.is_dir():
        return []
    ours = written_by_gradcheck(out) | {MANIFEST}
    return sorted(n for n in os.listdir(out) if n not in ours and n not in staged_names)


def _count(path: Path, limit: int) -> int:
    n = 1
    if path.is_dir() and not path.is_symlink():
        for _root, dirs, files in os.walk(path):
            n += len(dirs) + len(files)
            if n > limit:
                break
    return n


def _link_tree(src: Path, dst: Path) -> None:
    """``src`` recreated at ``dst`` with hard links (a copy where links cannot be made)."""
    if src.is_symlink():
        os.symlink(os.readlink(src), dst)
    elif src.is_dir():
        os.mkdir(dst)
        shutil.copystat(src, dst)
        for name in os.listdir(src):
            _link_tree(src / name, dst / name)
    else:
        try:
            os.link(src, dst)
        except OSError:  # another file system, or links not allowed: copy it
            shutil.copy2(src, dst)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux ``renameat2``); False where the OS cannot."""
    libc_name = ctypes.util.find_library("c")
    fn = getattr(ctypes.CDLL(libc_name, use_errno=True), "renameat2", None) if libc_name else None
    if fn is None:
        return False
    at_fdcwd = -100
    res = fn(at_fdcwd, os.fsencode(str(a)), at_fdcwd, os.fsencode(str(b)), _RENAME_EXCHANGE)
    return res == 0


def _write_manifest(folder: Path, names: list[str]) -> None:
    (folder / MANIFEST).write_text(json.dumps(sorted(names), indent=0) + "\n", encoding="utf-8")


def _in_place(stage: Stage, names: list[str]) -> None:
    """Move the staged files into ``out`` one by one (each rename atomic), the page and the
    records last, then remove what the old manifest lists and this run did not write."""
    out = stage.out
    old = written_by_gradcheck(out)
    out.mkdir(exist_ok=True)
    order = sorted(names, key=lambda n: (n == "index.html" or n.endswith(".json"),
                                         n.endswith(".json"), n))
    for n in order:
        target = out / n
        if target.is_dir() and not target.is_symlink():
            raise OSError(f"{str(target)!r} is a directory of yours; gradcheck writes a file there")
        os.replace(stage.path / n, target)
    for n in sorted(old - set(names)):
        p = out / n
        if p.is_file() or p.is_symlink():
            p.unlink()
    _write_manifest(out, names)
    shutil.rmtree(stage.path, ignore_errors=True)


def _swap(stage: Stage, names: list[str], others: list[str]) -> None:
    for n in others:
        _link_tree(stage.out / n, stage.path / n)
    _write_manifest(stage.path, names)
    if not stage.out.exists():
        os.rename(stage.path, stage.out)
        return
    if _exchange(stage.path, stage.out):
        shutil.rmtree(stage.path)  # now the previous report
        return
    old = stage.path.with_name(stage.path.name + ".old")
    os.rename(stage.out, old)
    os.rename(stage.path, stage.out)
    shutil.rmtree(old)


def commit(stage: Stage) -> None:
    """Put the staged files in place of ``stage.out``'s report (see the module's docstring)."""
    names = sorted(os.listdir(stage.path))
    others = _others(stage.out, set(names))
    cwd = Path.cwd().resolve()
    out = stage.out.resolve()
    holds_cwd = cwd == out or out in cwd.parents
    carried = sum(_count(stage.out / n, MAX_CARRIED + 1) for n in others)
    foreign = bool(others) and not (stage.out / MANIFEST).exists()
    if stage.out.exists() and (holds_cwd or foreign or carried > MAX_CARRIED):
        why = ("it holds the working directory" if holds_cwd else
               "gradcheck did not make it (no manifest), so it is not replaced" if foreign else
               f"it holds more than {MAX_CARRIED} files of other programs")
        stage.notes.append(f"the report was written into {str(stage.out)!r} file by file, not "
                           f"swapped in whole: {why}")
        _in_place(stage, names)
    else:
        _swap(stage, names, others)


@contextlib.contextmanager
def staged(out_dir: str | os.PathLike[str]) -> Iterator[Stage]:
    """A fresh directory beside ``out_dir`` to write a command's files into; swapped in whole
    when the block ends normally, removed (with any directory this call created) when it
    raises. ``out_dir`` that cannot be written is an :class:`OutputError` before the block."""
    out = Path(out_dir).absolute()
    if out.exists() and not out.is_dir():
        raise OutputError(f"cannot write to output directory {str(out_dir)!r}: it is a file")
    first_new = first_missing(out.parent)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        path = Path(tempfile.mkdtemp(prefix=f".{out.name}.gradcheck-", dir=out.parent))
    except OSError as exc:
        raise _fail(Path(out_dir), exc) from None
    stage = Stage(path=path, out=out)
    try:
        os.chmod(path, 0o777 & ~_umask())  # mkdtemp's 0700 is not what a new directory gets
        yield stage
        try:
            commit(stage)
        except OSError as exc:
            raise _fail(Path(out_dir), exc) from None
    finally:
        if path.exists():
            shutil.rmtree(path, ignore_errors=True)
        if first_new is not None and not out.exists():
            shutil.rmtree(first_new, ignore_errors=True)
