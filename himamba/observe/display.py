"""Jupyter display hooks: objects of lower floors show themselves with renderers of higher floors.

The cache, :class:`~himamba.observe.snapshot.Snapshot` and recorded steps inherit
:class:`Displayable`. Its ``_repr_mimebundle_`` asks the renderer that :mod:`himamba.viz`
registers here (an SVG of the tree); without one it falls back to plain text. This keeps the
import direction: the viz floor registers itself; the cache never imports it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

_RENDERERS: dict[str, Callable[[Any], dict[str, Any]]] = {}


def register_renderer(name: str, fn: Callable[[Any], dict[str, Any]]) -> None:
    """Install ``fn(obj) -> mimebundle`` as the display of Displayable objects."""
    _RENDERERS[name] = fn


class Displayable:
    """Mixin: rich display in Jupyter through the registered renderer."""

    __slots__ = ()

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        fn = _RENDERERS.get("tree")
        if fn is None:
            return {"text/plain": repr(self)}
        return fn(self)
