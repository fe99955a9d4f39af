"""Every place gradcheck reads torch's (or Python's) internals, in one small module, so a torch
release that moves one of them breaks one function here, with a test, and not the locator, the
adapters and the probes in three different ways.

- how ``@torch.no_grad()`` / ``@torch.inference_mode()`` decorators are built (torch's
  ``utils/_contextlib.py``: a ``decorate_context`` closure over ``ctx_factory`` and ``func``);
- how a reentrant ``torch.utils.checkpoint`` runs its function (``CheckpointFunction.forward``);
- a removable hook handle's ``hooks_dict_ref`` (is the hook still registered?);
- pytree flattening of arbitrary call arguments;
- which stack frames are the user's (not torch's, not gradcheck's own machinery).
"""
from __future__ import annotations

import dis
import os
import re
import sys
from types import FrameType
from typing import Any

import torch
from torch.utils._pytree import tree_flatten

_TORCH_DIR = os.path.dirname(torch.__file__) + os.sep
_OWN_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
#: gradcheck's built-in sampler is sampler code like any user's: its frames are reported
_SAMPLER_DIR = os.path.join(_OWN_DIR, "sampling") + os.sep
_SKIP_FILES = ("contextlib.py", "functools.py")
_GRAD_OFF = (torch.no_grad, torch.inference_mode)


# -- call arguments -------------------------------------------------------------------------------

def tensors_in(x: Any) -> list[torch.Tensor]:
    """Every tensor inside ``x`` (nested tuples, lists, dicts), in order."""
    return [t for t in tree_flatten(x)[0] if isinstance(t, torch.Tensor)]


# -- hooks ----------------------------------------------------------------------------------------

def hook_registered(handle: Any) -> bool:
    """Whether a ``RemovableHandle`` still has its hook registered."""
    ref = getattr(handle, "hooks_dict_ref", None)
    if ref is None:  # a torch whose handles keep their dict elsewhere: cannot tell; removed
        return False
    d = ref()
    return d is not None and handle.id in d


# -- grad-disabling decorators ----------------------------------------------------------------------

def _decorator_cells(fn: Any) -> dict[str, Any] | None:
    """The closure of torch's ``decorate_context`` wrapper, if ``fn`` is one."""
    code = getattr(fn, "__code__", None)
    if code is None or code.co_name != "decorate_context" or not fn.__closure__:
        return None
    return dict(zip(code.co_freevars, (c.cell_contents for c in fn.__closure__)))


def grad_decorator(fn: Any) -> str | None:
    """``"@torch.no_grad()"`` (or inference_mode) if ``fn`` itself is torch's decorator wrapper
    around a function, else None."""
    cells = _decorator_cells(fn)
    ctx = getattr((cells or {}).get("ctx_factory"), "__self__", None)
    if isinstance(ctx, _GRAD_OFF):
        return f"@torch.{type(ctx).__name__}()"
    return None


def qualname(fn: Any) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


def grad_decorators(fn: Any) -> list[tuple[str, str]]:
    """Every grad-disabling decorator in ``fn``'s ``__wrapped__`` chain, outermost first, as
    (decorator, the qualified name of the function it wraps)."""
    out, seen = [], set()
    f = fn
    while f is not None and id(f) not in seen:
        seen.add(id(f))
        dec = grad_decorator(f)
        if dec is not None:
            out.append((dec, qualname(getattr(f, "__wrapped__", f))))
        f = getattr(f, "__wrapped__", None)
    return out


def decorated_on_stack(kind: type, frame: FrameType | None = None) -> str | None:
    """The innermost function on the stack wrapped by a ``@kind()`` decorator (no_grad, ...),
    with where it is defined: ``'pkg.mod.fn (defined at path.py:12)'``."""
    f = frame or sys._getframe(1)
    while f is not None:
        if f.f_code.co_name == "decorate_context" and \
                f.f_code.co_filename.endswith("_contextlib.py"):
            ctx = getattr(f.f_locals.get("ctx_factory"), "__self__", None)
            fn = f.f_locals.get("func")
            if isinstance(ctx, kind) and fn is not None:
                code = getattr(fn, "__code__", None)
                where = (f" (defined at {rel_path(code.co_filename)}:{code.co_firstlineno})"
                         if code else "")
                return f"{qualname(fn)}{where}"
        f = f.f_back
    return None


_GRAD_OFF_WITH = re.compile(r"\b(no_grad|inference_mode)\s*\(|\bset_grad_enabled\s*\(\s*False")
_WITH_CACHE: dict[tuple[str, float], list[tuple[int, int, str]]] = {}


def _grad_off_withs(filename: str) -> list[tuple[int, int, str]]:
    """Every ``with`` statement in a source file whose context disables grad: (first line, last
    line, the context as written), cached per file and modification time."""
    try:
        key = (filename, os.path.getmtime(filename))
    except OSError:
        return []
    if key not in _WITH_CACHE:
        found: list[tuple[int, int, str]] = []
        try:
            import ast

            with open(filename, encoding="utf-8") as fh:
                tree = ast.parse(fh.read())
            for node in ast.walk(tree):
                if isinstance(node, (ast.With, ast.AsyncWith)):
                    for item in node.items:
                        text = ast.unparse(item.context_expr)
                        if _GRAD_OFF_WITH.search(text):
                            found.append((node.lineno, node.end_lineno or node.lineno, text))
        except (OSError, SyntaxError, ValueError):  # unreadable source: no with-sites known in it
            found = []
        _WITH_CACHE[key] = found
    return _WITH_CACHE[key]


def grad_off_sites(frame: FrameType | None = None) -> list[dict[str, str]]:
    """Every grad-disabling site in effect on the stack now, outermost first: functions wrapped
    by ``@torch.no_grad()`` / ``@torch.inference_mode()`` / ``@torch.set_grad_enabled(False)``
    (the function, and the decorator's file:line) and ``with`` blocks of those in the user's
    frames (the with's file:line). Each is ``{"api", "function", "location"}``."""
    f = frame or sys._getframe(1)
    sites: list[dict[str, str]] = []
    while f is not None:
        code = f.f_code
        if code.co_name == "decorate_context" and code.co_filename.endswith("_contextlib.py"):
            ctx = getattr(f.f_locals.get("ctx_factory"), "__self__", None)
            fn = f.f_locals.get("func")
            api = None
            if isinstance(ctx, torch.no_grad):
                api = "@torch.no_grad()"
            elif isinstance(ctx, torch.inference_mode) and getattr(ctx, "mode", True):
                api = "@torch.inference_mode()"
            elif isinstance(ctx, torch.set_grad_enabled) and not getattr(ctx, "mode", True):
                api = "@torch.set_grad_enabled(False)"
            fcode = getattr(fn, "__code__", None)
            if api and fcode is not None:
                sites.append({"api": api, "function": qualname(fn),
                              "location": f"{rel_path(fcode.co_filename)}:{fcode.co_firstlineno}"})
        elif is_user_file(code.co_filename):
            for first, last, text in _grad_off_withs(code.co_filename):
                if code.co_firstlineno <= first <= f.f_lineno <= last and first != f.f_lineno:
                    sites.append({"api": f"with {text}:", "function": code.co_name,
                                  "location": f"{rel_path(code.co_filename)}:{first}"})
        f = f.f_back
    return list(reversed(sites))


def describe_sites(sites: list[dict[str, str]]) -> str:
    """'@torch.no_grad() on Sampler.forward (res.py:40), then ...'."""
    return ", then ".join(
        f"{s['api']} on {s['function']} ({s['location']})" if s["api"].startswith("@") else
        f"`{s['api']}` in {s['function']} ({s['location']})" for s in sites)


def in_backward() -> bool:
    """Whether this thread is inside an autograd backward pass (a checkpoint recomputing its
    forward there): probes made then are not the sampler's (torch's graph-task id, where this
    torch has it; without it, never)."""
    task = getattr(torch._C, "_current_graph_task_id", None)
    return task is not None and task() != -1


def in_distribution_sample(frame: FrameType | None = None) -> bool:
    """Whether the stack is inside a ``torch.distributions`` ``sample()`` (which draws under
    no_grad: ``rsample()`` is the reparameterised draw)."""
    f = frame or sys._getframe(1)
    marker = os.path.join("torch", "distributions", "")
    while f is not None:
        if f.f_code.co_name == "sample" and marker in f.f_code.co_filename:
            return True
        f = f.f_back
    return False


def in_reentrant_checkpoint(frame: FrameType | None = None) -> bool:
    """Whether the stack is inside a reentrant ``torch.utils.checkpoint`` forward."""
    f = frame or sys._getframe(1)
    while f is not None:
        if f.f_code.co_filename.endswith(os.path.join("utils", "checkpoint.py")) and \
                f.f_code.co_name == "forward":
            return True
        f = f.f_back
    return False


# -- grad mode switches -----------------------------------------------------------------------------

_GRAD_MODE_FILE = os.path.join("autograd", "grad_mode.py")
_WITH_OPS = ("BEFORE_WITH", "SETUP_WITH")  # 3.11-3.13, 3.10


def _opens_a_with_block(frame: FrameType) -> bool:
    """Whether ``frame`` is executing (or about to execute) the start of a ``with`` statement:
    its current instruction, or the next one, opens the block."""
    ins = [i for i in dis.get_instructions(frame.f_code)]
    for k, i in enumerate(ins):
        if i.offset >= frame.f_lasti:
            nxt = ins[k + 1].opname if k + 1 < len(ins) else ""
            return i.opname in _WITH_OPS or nxt in _WITH_OPS
    return False


def grad_switch_site() -> tuple[str | None, str | None, str, bool]:
    """Who is switching grad mode now: (the user's ``path:line``, function, the API as written,
    whether it opens a ``with`` block that will restore the mode). Called from inside torch's
    ``_set_grad_enabled``."""
    f = sys._getframe(1)
    api = "torch.set_grad_enabled(False)"
    while f is not None and not is_user_file(f.f_code.co_filename):
        if f.f_code.co_name == "decorate_context" and f.f_code.co_filename.endswith(
                "_contextlib.py"):  # a decorator: it restores the mode when the function returns
            fn = f.f_locals.get("func")
            code = getattr(fn, "__code__", None)
            where = f"{rel_path(code.co_filename)}:{code.co_firstlineno}" if code else None
            return where, qualname(fn) if fn is not None else None, f"@{api}", True
        if f.f_code.co_filename.endswith(_GRAD_MODE_FILE):
            owner = type(f.f_locals.get("self", None)).__name__
            if owner in ("no_grad", "set_grad_enabled"):
                api = "torch.no_grad()" if owner == "no_grad" else "torch.set_grad_enabled(False)"
        f = f.f_back
    if f is None:
        return None, None, api, False
    where = f"{rel_path(f.f_code.co_filename)}:{f.f_lineno}"
    block = _opens_a_with_block(f)
    if api == "torch.no_grad()" and not block:
        api = "torch.no_grad().__enter__()"
    return where, f.f_code.co_name, api, block


# -- the user's frames ----------------------------------------------------------------------------

def is_user_file(filename: str) -> bool:
    """A frame of the user's code: not torch, not gradcheck's own machinery (its built-in
    sampler counts as sampler code), not contextlib/functools plumbing."""
    own = filename.startswith(_OWN_DIR) and not filename.startswith(_SAMPLER_DIR)
    return not (filename.startswith(_TORCH_DIR) or own or filename.endswith(_SKIP_FILES)
                or filename.startswith("<frozen"))


def rel_path(filename: str) -> str:
    """``filename`` as a reader finds it: relative to the working directory when inside it; else
    relative to the import root it lies under (``cosmos_predict1/utils/res_sampler.py`` for a
    file in site-packages: the module's own path); else absolute. Never a chain of ``../``.
    Pseudo-files such as ``<string>`` stay as they are. :func:`find_source` reads any of them."""
    if filename.startswith("<"):
        return filename
    path = os.path.abspath(filename)
    cwd = os.getcwd()
    if path.startswith(cwd.rstrip(os.sep) + os.sep):
        return os.path.relpath(path, cwd)
    roots = [os.path.abspath(p) for p in sys.path if p and os.path.isdir(p)]
    under = [r for r in roots if path.startswith(r.rstrip(os.sep) + os.sep)]
    if under:
        return os.path.relpath(path, max(under, key=len))
    return path


def find_source(shown: str) -> str | None:
    """The file a :func:`rel_path` names: as given (relative to the working directory, or
    absolute), else under the first import root that has it; None if none does."""
    if os.path.isfile(shown):
        return shown
    if not os.path.isabs(shown):
        for root in sys.path:
            cand = os.path.join(root or os.getcwd(), shown)
            if os.path.isfile(cand):
                return cand
    return None


def _first_user_frame(f: FrameType | None) -> FrameType | None:
    while f is not None and not is_user_file(f.f_code.co_filename):
        f = f.f_back
    return f


def user_frame() -> tuple[str | None, str | None]:
    """(``path:line``, function) of the first stack frame outside torch and gradcheck's own
    machinery."""
    f = _first_user_frame(sys._getframe(1))
    if f is None:
        return None, None
    return f"{rel_path(f.f_code.co_filename)}:{f.f_lineno}", f.f_code.co_name


def user_frames(limit: int = 8) -> tuple[tuple[str, str], ...]:
    """(``path:line``, function) of the user frames on the stack, innermost first."""
    out, f = [], _first_user_frame(sys._getframe(1))
    while f is not None and len(out) < limit:
        if is_user_file(f.f_code.co_filename):
            out.append((f"{rel_path(f.f_code.co_filename)}:{f.f_lineno}", f.f_code.co_name))
        f = f.f_back
    return tuple(out)


def caller_of_user_frame() -> str | None:
    """``path:line (function)`` of the frame that called the first user frame, if it is also
    outside torch and gradcheck: where a library helper such as diffusers' ``randn_tensor`` was
    called from."""
    f = _first_user_frame(sys._getframe(1))
    caller = f.f_back if f is not None else None
    if caller is None or not is_user_file(caller.f_code.co_filename):
        return None
    return f"{rel_path(caller.f_code.co_filename)}:{caller.f_lineno} ({caller.f_code.co_name})"
