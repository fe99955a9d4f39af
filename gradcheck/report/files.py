"""Atomic file output: write to a temporary file in the same directory, then rename over the
target, so a reader (or a crash) never sees a half-written report."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from ..errors import GradcheckError, OutputError
from ..records import RunRecord


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


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to a temporary file beside ``path``, then rename it over ``path``."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
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


def load_record(path: str | os.PathLike[str]) -> RunRecord:
    """Read a ``report.json`` back into a :class:`RunRecord` (no torch needed)."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError) as exc:
        raise GradcheckError(f"cannot read report {str(path)!r}: {exc}") from None
    return RunRecord.from_dict(data)
