"""The page's drawings as data: a tree of :class:`Node` (an SVG element, its attributes, its text
and children), built by :mod:`.views` and :mod:`.opviews` from a record, and turned into markup in
one place, :func:`markup`, with one escaping rule: :func:`markupsafe.escape`, the same one the
page's Jinja templates autoescape with. Nothing else in gradcheck writes an angle bracket of a
drawing, and the page's script draws nothing: it only shows, hides and zooms what is here.

Tag and attribute names come from gradcheck's own code, never from a record; they are checked
all the same (a name that is not a plain XML name raises instead of reaching the page).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Union

from markupsafe import Markup, escape

Value = Union[str, int, float]

_NAME = re.compile(r"[a-zA-Z][a-zA-Z0-9:-]*\Z")
#: the elements a drawing is made of
TAGS = frozenset({"svg", "g", "rect", "text", "path", "line", "title", "defs", "pattern",
                  "marker", "template", "div", "p", "span", "strong"})


@dataclass(frozen=True, slots=True)
class Node:
    """One element: ``tag``, its attributes in order, its text (escaped), its children."""

    tag: str
    attrs: tuple[tuple[str, Value], ...] = ()
    text: str | None = None
    children: tuple[Node, ...] = ()


def el(tag: str, *children: Node | None, text: str | None = None,
       **attrs: Value | None) -> Node:
    """A node. Keyword names map to attributes: a trailing ``_`` is dropped (``class_``), other
    ``_`` become ``-`` (``text_anchor``, ``data_step``); None values and children are left out."""
    pairs = tuple((k.rstrip("_").replace("_", "-"), v) for k, v in attrs.items() if v is not None)
    return Node(tag, pairs, text, tuple(c for c in children if c is not None))


def markup(node: Node) -> Markup:
    """The node as markup: every text and attribute value escaped (markupsafe), every tag and
    attribute name checked."""
    out: list[str] = []
    _write(node, out)
    return Markup("".join(out))


def _write(node: Node, out: list[str]) -> None:
    stack: list[Node | str] = [node]
    while stack:
        n = stack.pop()
        if isinstance(n, str):  # a closing tag
            out.append(n)
            continue
        if n.tag not in TAGS:
            raise ValueError(f"not an element of a drawing: {n.tag!r}")
        out.append("<" + n.tag)
        for k, v in n.attrs:
            if not _NAME.match(k):
                raise ValueError(f"not an attribute name: {k!r}")
            out.append(f' {k}="{escape(v)}"')
        out.append(">")
        if n.text is not None:
            out.append(str(escape(n.text)))
        stack.append(f"</{n.tag}>")
        stack.extend(reversed(n.children))
