"""Palette check: how far apart the drawing's colours stay for readers with colour-vision
deficiencies, and how well the text reads on each fill.

Colours are simulated with the matrices of Machado, Oliveira and Fernandes (2009, "A
physiologically-based model for simulation of color vision deficiency", severity 1.0), applied
in linear sRGB, then compared as CIE L*a*b* distances (ΔE*76; about 2.3 is just noticeable,
above 10 reads as a different colour at a glance). Text contrast is the WCAG 2 ratio.

    palette_report()   # {"deuteranopia": (17.9, "device", "host-only"), ...}
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping

from himamba.viz import style

#: Linear-RGB simulation matrices (Machado et al. 2009, severity 1.0); "normal" is the identity.
VISION: dict[str, tuple[tuple[float, float, float], ...]] = {
    "normal": ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)),
    "protanopia": ((0.152286, 1.052583, -0.204868), (0.114503, 0.786281, 0.099216),
                   (-0.003882, -0.048116, 1.051998)),
    "deuteranopia": ((0.367322, 0.860646, -0.227968), (0.280085, 0.672501, 0.047413),
                     (-0.011820, 0.042940, 0.968881)),
    "tritanopia": ((1.255528, -0.076749, -0.178779), (-0.078411, 0.930809, 0.147602),
                   (0.004733, 0.691367, 0.303900)),
}


def fills() -> dict[str, str]:
    """The fills that carry a meaning: the four node kinds, "changed" and "folded"."""
    return {**{k: v for k, v in style.FILL.items() if k != "root"}, "changed": style.HIGHLIGHT,
            "folded": style.COLLAPSED_FILL}


def borders() -> dict[str, str]:
    """The border colours that carry a meaning: plain, locked, pinned, deleted."""
    return {"plain": style.BORDER, "LOCK": style.LOCK_COLOR, "PIN": style.PIN_COLOR, "deleted": style.GHOST}


def _linear(hex_colour: str) -> tuple[float, float, float]:
    c = [int(hex_colour[i:i + 2], 16) / 255 for i in (1, 3, 5)]
    return tuple(x / 12.92 if x <= 0.04045 else ((x + 0.055) / 1.055) ** 2.4 for x in c)  # type: ignore[return-value]


def _lab(rgb: tuple[float, float, float]) -> tuple[float, float, float]:
    r, g, b = (min(max(x, 0.0), 1.0) for x in rgb)
    x = (0.4124 * r + 0.3576 * g + 0.1805 * b) / 0.95047
    y = 0.2126 * r + 0.7152 * g + 0.0722 * b
    z = (0.0193 * r + 0.1192 * g + 0.9505 * b) / 1.08883
    fx, fy, fz = (t ** (1 / 3) if t > 0.008856 else 7.787 * t + 16 / 116 for t in (x, y, z))
    return 116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)


def simulate(hex_colour: str, vision: str) -> tuple[float, float, float]:
    """``hex_colour`` as a reader with ``vision`` sees it, in CIE L*a*b*."""
    m, c = VISION[vision], _linear(hex_colour)
    return _lab(tuple(sum(m[i][j] * c[j] for j in range(3)) for i in range(3)))  # type: ignore[arg-type]


def distance(a: str, b: str, vision: str = "normal") -> float:
    """ΔE*76 between two colours as a reader with ``vision`` sees them."""
    la, lb = simulate(a, vision), simulate(b, vision)
    return sum((x - y) ** 2 for x, y in zip(la, lb, strict=True)) ** 0.5


def closest_pair(colours: Mapping[str, str], vision: str) -> tuple[float, str, str]:
    """(ΔE, name, name) of the two ``colours`` that look most alike to a reader with ``vision``."""
    return min((distance(colours[a], colours[b], vision), a, b) for a, b in itertools.combinations(colours, 2))


def palette_report(colours: Mapping[str, str] | None = None) -> dict[str, tuple[float, str, str]]:
    """For every simulated vision, the closest pair of ``colours`` (default: :func:`fills`)."""
    colours = fills() if colours is None else colours
    return {v: closest_pair(colours, v) for v in VISION}


def contrast(a: str, b: str) -> float:
    """The WCAG 2 contrast ratio of two colours (1 to 21)."""
    def lum(c: str) -> float:
        r, g, b_ = _linear(c)
        return 0.2126 * r + 0.7152 * g + 0.0722 * b_

    hi, lo = sorted((lum(a), lum(b)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)
