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


_EXPORTERS: dict[str, Callable[..., Any]] = {}


def register_renderer(name: str, fn: Callable[[Any], dict[str, Any]]) -> None:
    """Install ``fn(obj) -> mimebundle`` as the display of Displayable objects."""
    _RENDERERS[name] = fn


def register_exporter(name: str, fn: Callable[..., Any]) -> None:
    """Install ``fn`` as the exporter called ``name`` (``"html"``: steps to one HTML page)."""
    _EXPORTERS[name] = fn


def exporter(name: str) -> Callable[..., Any]:
    """The exporter called ``name``; importing :mod:`himamba.viz` registers them (done here on
    first use, so a recorder can export without its caller importing the viz floor)."""
    if name not in _EXPORTERS:
        import importlib

        importlib.import_module("himamba.viz")
    return _EXPORTERS[name]


class Displayable:
    """Mixin: rich display in Jupyter through the registered renderer."""

    __slots__ = ()

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        fn = _RENDERERS.get("tree")
        if fn is None:
            return {"text/plain": repr(self)}
        return fn(self)
