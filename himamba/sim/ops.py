"""The fuzzer's operations and serving one request: the names scripts and notebooks import.

Each operation is declared once in :mod:`himamba.sim.vocabulary` (its fields, its draw, how it
runs on himamba and on a differential side); requests are served by :mod:`himamba.sim.serving`.
"""

from __future__ import annotations

from himamba.errors import OracleError
from himamba.sim.serving import serve
from himamba.sim.vocabulary import (
    OPERATION_FIELDS,
    OPERATIONS,
    VOCABULARY,
    DriverState,
    apply,
    check_op,
)

__all__ = ["OPERATIONS", "OPERATION_FIELDS", "VOCABULARY", "DriverState", "OracleError", "apply", "check_op", "serve"]
