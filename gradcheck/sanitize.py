"""Text that came from outside (a record file, a mode name, an exception message) made safe for
where it goes: the terminal (no control characters) and file names (a slug). Pure, no imports of
the package: every layer may use it."""
from __future__ import annotations

import re
import unicodedata

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069]")


def clean(text: str) -> str:
    """``text`` for a terminal: every control character (ANSI escapes' ESC, carriage returns,
    bidirectional overrides) shown as ``\\xNN`` instead of acting; newlines and tabs kept."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100
                        else f"\\u{ord(m.group()):04x}", text)


def slug(name: str, limit: int = 60) -> str:
    """``name`` as a file-name part: ASCII letters, digits, ``-`` and ``_`` only, never empty,
    never a path (``/../../x`` becomes ``x``), at most ``limit`` characters."""
    ascii_ = unicodedata.normalize("NFKD", str(name)).encode("ascii", "ignore").decode("ascii")
    s = re.sub(r"[^A-Za-z0-9_-]+", "-", ascii_).strip("-_")[:limit].strip("-_")
    return s or "mode"


def slugs(names: list[str]) -> dict[str, str]:
    """A distinct slug for each name (``a``, ``a-2``, ... where two names slug alike)."""
    out: dict[str, str] = {}
    taken: set[str] = set()
    for n in names:
        base = s = slug(n)
        k = 2
        while s.lower() in taken:
            s, k = f"{base}-{k}", k + 1
        taken.add(s.lower())
        out[n] = s
    return out
