"""Atomic file output: write to a temporary file in the same directory, then rename over the
target, so a reader (or a crash) never sees a half-written report."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from ..errors import GradcheckError, OutputError
from ..codec import MAX_BYTES, RecordError, parse_json
from ..sanitize import clean
from ..records import OptimizeRecord, RunRecord


def check_writable(out_dir: str | os.PathLike[str]) -> Path:
    """Create ``out_dir`` if needed and prove a file can be written there; raise OutputError if not.

    Called before any work, so a bad ``--out`` fails in a second, not after the run.
    """
    p = Path(out_dir)
    try:
        p.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".gradcheck-probe-", dir=p)
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        raise OutputError(f"cannot write to output directory {str(p)!r}: {exc.strerror or exc}") from None
    return p


def first_missing(path: Path) -> Path | None:
    """The outermost of ``path`` and its parents that does not exist yet (what creating ``path``
    creates, and what to remove again if nothing lands in it); None when ``path`` exists."""
    first = None
    for q in [path, *path.parents]:
        if q.exists():
            break
        first = q
    return first


@contextlib.contextmanager
def output_dir(out_dir: str | os.PathLike[str], record: str) -> Iterator[Path]:
    """``out_dir`` made ready for one command's files: proved writable now (before any work),
    created if needed, and, if the command ends without writing its ``record`` file (it raised,
    or returned an error), removed again together with every directory this call created, so a
    failed command leaves no empty or half-filled new directory behind. A directory that existed
    before is never removed (its old files stay until a successful run replaces them)."""
    p = Path(out_dir)
    first_new = first_missing(p)
    p = check_writable(p)
    try:
        yield p
    finally:
        if first_new is not None and not (p / record).exists():
            shutil.rmtree(first_new, ignore_errors=True)


def _proc_umask() -> int | None:
    """The umask Linux states in ``/proc/self/status``; None where there is none to read."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):  # no /proc (not Linux), or another format
        return None
    return None


def _umask() -> int:
    """The process's umask (read without changing it where the OS allows)."""
    mask = _proc_umask()
    if mask is not None:
        return mask
    mask = os.umask(0o022)  # elsewhere: read it by setting it, and put it straight back
    os.umask(mask)
    return mask


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to a temporary file beside ``path``, then rename it over ``path``. The
    file gets the permissions any new file would (0666 less the umask), not mkstemp's 0600."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.chmod(tmp, 0o666 & ~_umask())
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
    except OSError as exc:
        raise OutputError(f"cannot write {str(path)!r}: {exc.strerror or exc}") from None
    return path


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike[str], data: Any) -> Path:
    text = json.dumps(data, indent=2, sort_keys=False, allow_nan=False) + "\n"
    return write_text_atomic(path, text)


def load_record(path: str | os.PathLike[str]) -> RunRecord | OptimizeRecord:
    """Read a ``report.json`` (:class:`RunRecord`) or an ``optimize.json``
    (:class:`OptimizeRecord`) back (no torch needed), strictly: it is input someone may have sent,
    so every field's type is checked and absurd sizes are refused; anything wrong is a one-line
    :class:`GradcheckError` saying what. The checks are then judged again from the recorded
    evidence (:func:`gradcheck.rejudge.rejudge`): the stored verdicts are not trusted."""
    from ..rejudge import rejudge

    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_BYTES + 1)
    except OSError as exc:
        raise GradcheckError(f"cannot read report {str(path)!r}: {exc.strerror or exc}") from None
    try:
        data = parse_json(raw)
    except RecordError as exc:
        raise GradcheckError(f"cannot read report {str(path)!r}: {exc}") from None
    tool = data.get("tool") if isinstance(data, dict) else None
    cls = {RunRecord.TOOL: RunRecord, OptimizeRecord.TOOL: OptimizeRecord}.get(tool)
    if cls is None:
        raise GradcheckError(f"cannot render {str(path)!r}: not a report.json or optimize.json "
                             f"written by gradcheck (its 'tool' is {clean(repr(tool))[:80]})")
    try:
        return rejudge(cls.from_dict(data))
    except RecordError as exc:
        raise GradcheckError(f"cannot render {str(path)!r}: {clean(str(exc))[:300]}") from None
