"""Progress while a diagnosis runs, for whoever watches (``gradcheck run`` on a terminal).

Scoped like :mod:`gradcheck.observers`: ``with reporting(fn):`` calls ``fn(event, detail)`` for
each event inside the block (this thread / async context): ``("mode", name)`` when a noise
mode's diagnosis starts, ``("stage", name)`` when one of its stages starts (baseline, record,
shadow, numeric, ...), ``("call", None)`` at each denoiser call. Outside such a block an event
costs one context-variable read. No torch here.
"""
from __future__ import annotations

import contextlib
import sys
import time
from contextvars import ContextVar
from typing import Any, Callable, Iterator, TextIO

_WATCHERS: ContextVar[tuple[Callable[[str, Any], None], ...]] = ContextVar(
    "gradcheck_progress", default=())


@contextlib.contextmanager
def reporting(fn: Callable[[str, Any], None]) -> Iterator[None]:
    token = _WATCHERS.set(_WATCHERS.get() + (fn,))
    try:
        yield
    finally:
        _WATCHERS.reset(token)


def event(kind: str, detail: Any = None) -> None:
    for fn in _WATCHERS.get():
        fn(kind, detail)


#: what each stage is doing, in words a waiting user reads
STAGES = {"baseline": "the loss's baseline (1 forward)", "record": "the recorded pass",
          "shadow": "a float64 shadow run", "numeric": "finite differences",
          "optim": "an Adam step on a copy of z0", "path_probe": "probing the path",
          "locate": "the break locator, where needed", "compiled": "the compiled run", "explain":
          "replaying the backward under anomaly detection"}


class Display:
    """``gradcheck run``'s display of the events: a tqdm bar of denoiser calls whose label
    names the mode and stage on a terminal; when piped, one plain line per mode and stage, but
    only once the run has taken ``delay_s`` (the lines so far come first): a quick run, or an
    error found at once, stays the one line it is."""

    def __init__(self, stream: TextIO | None = None, tty: bool | None = None,
                 delay_s: float = 5.0) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.mode: str | None = None
        self.bar: Any = None
        self.delay_s = delay_s
        self.t0 = time.monotonic()
        self.held: list[str] | None = []  # plain lines not shown yet (None: showing)

    def __call__(self, kind: str, detail: Any) -> None:
        if kind == "mode":
            self.close()
            self.mode = detail
            self._say(f"mode {detail}")
        elif kind == "stage":
            self._say(f"mode {self.mode}: {STAGES.get(detail, detail)}" if self.mode else
                      STAGES.get(detail, detail))
        elif kind == "call" and self.bar is not None:
            self.bar.update(1)

    def _say(self, text: str) -> None:
        if not self.tty:
            line = f"[gradcheck] {text}"
            if self.held is not None and time.monotonic() - self.t0 < self.delay_s:
                self.held.append(line)
                return
            for x in (self.held or []) + [line]:
                print(x, file=self.stream, flush=True)
            self.held = None
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=None, unit=" denoiser calls", file=self.stream, leave=False,
                            dynamic_ncols=True)
        self.bar.set_description_str(text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
