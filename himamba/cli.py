"""The ``himamba`` command line (see ``himamba --help``)."""

from __future__ import annotations


def main(argv: list[str] | None = None) -> int:
    """Entry point; the sub-commands are added in :mod:`himamba.cli`."""
    print("himamba: no sub-commands yet")
    return 0
