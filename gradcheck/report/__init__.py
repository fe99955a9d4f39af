"""Renderers: finished records in, text/files out. Nothing below this package imports torch."""
from __future__ import annotations

from .files import (
    check_writable, load_record, output_dir, write_bytes_atomic, write_json_atomic,
    write_text_atomic,
)
from .staging import staged
from .terminal import summary

__all__ = ["check_writable", "load_record", "output_dir", "staged", "write_bytes_atomic",
           "write_json_atomic",
           "write_text_atomic", "summary"]
