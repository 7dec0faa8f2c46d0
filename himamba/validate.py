"""Checks every public entry point makes before it changes anything.

One module, below every floor (it imports only :mod:`himamba.errors` and the standard library),
so the core, the memory pools, the caches, the simulator and the command line all raise the
same errors with the same sentences: the argument, the value, and what is allowed.

* numbers: :func:`check_int`, :func:`check_count`, :func:`check_optional_count`,
  :func:`check_quota`, :func:`check_bool`, :func:`check_choice`;
* token ids: :func:`check_token_ids` (non-negative, below ``2**63``, so that they fit an int64
  tensor) and :data:`MAX_REQUEST_TOKENS`, the bound on lengths read from files or asked for;
* memory: :func:`check_allocation` refuses pools larger than the memory they would live in,
  before anything is allocated;
* output folders: :func:`prepare_output_dir`, :func:`prepare_output_file` and
  :func:`write_text_no_follow` refuse non-empty folders (unless ``force``) and never follow a
  symbolic link when writing.

A check that passes returns the value (as a plain ``int`` where one is asked for) and costs a
few attribute lookups; the hot paths of replay call only the token check, in C-level passes.
Slot ownership (which slots a tree node holds) lives with the slots, in
:meth:`himamba.memory.allocator.SlotAllocator.handover_problem`.
"""

from __future__ import annotations

import array
import contextlib
import math
import operator
import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

from himamba.errors import InvalidInputError

MAX_TOKEN_ID = 2**63 - 1  # token ids travel in int64 tensors
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
MAX_REQUEST_TOKENS = 1 << 24  # the longest request a workload may ask for (16,777,216 tokens)

__all__ = [
    "MAX_REQUEST_TOKENS",
    "MAX_TOKEN_ID",
    "check_allocation",
    "check_bool",
    "check_choice",
    "check_count",
    "check_int",
    "check_optional_count",
    "check_quota",
    "check_request_length",
    "check_token_ids",
    "prepare_output_dir",
    "prepare_output_file",
    "write_text_no_follow",
]


# -- numbers ----------------------------------------------------------------------------------------
def _describe(value: object) -> str:
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({type(value).__name__})"


def check_int(value: object, name: str, low: int | None = None, high: int | None = None,
              error: type[InvalidInputError] = InvalidInputError) -> int:
    """``value`` as a plain int when it is an integer (numpy integers count; ``bool`` does not)
    within ``low..high`` (either bound may be ``None``); else raise ``error`` naming ``name``."""
    if type(value) is not int:
        try:
            if isinstance(value, bool):
                raise TypeError
            value = operator.index(value)
        except TypeError:
            raise error(f"{name} must be {_allowed(low, high)}, got {_describe(value)}") from None
    if (low is not None and value < low) or (high is not None and value > high):
        raise error(f"{name} must be {_allowed(low, high)}, got {value}")
    return value


def _allowed(low: int | None, high: int | None) -> str:
    if high is None:
        return {None: "an int", 0: "a non-negative int", 1: "a positive int"}.get(low, f"an int >= {low}")
    if low is None:
        return f"an int <= {high}"
    return f"an int in {low}..{high}"


def check_count(value: object, name: str, high: int | None = None) -> int:
    """A non-negative int (a size, a number of tokens or states)."""
    return check_int(value, name, 0, high)


def check_optional_count(value: object, name: str, high: int | None = None) -> int | None:
    """``None`` or a non-negative int."""
    return None if value is None else check_int(value, name, 0, high)


def check_quota(value: object, name: str = "mem_quota") -> int | float | None:
    """``None`` (no limit) or a non-negative, non-NaN number (``inf`` is no limit either)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        try:
            return check_int(value, name, 0)
        except InvalidInputError:
            raise InvalidInputError(f"{name} must be None or a non-negative number, got {_describe(value)}") from None
    if math.isnan(value) or value < 0:
        raise InvalidInputError(f"{name} must be None or a non-negative number, got {value!r}")
    return value


def check_bool(value: object, name: str) -> bool:
    """Exactly ``True`` or ``False`` (``"no"``, ``0`` and ``None`` are refused)."""
    if value is True or value is False:
        return value
    raise InvalidInputError(f"{name} must be True or False, got {_describe(value)}")


def check_choice(value: object, name: str, choices: Sequence[object]) -> object:
    """One of ``choices``."""
    try:
        ok = value in choices
    except TypeError:
        ok = False
    if not ok:
        raise InvalidInputError(f"{name} must be one of {tuple(choices)}, got {_describe(value)}")
    return value


# -- token ids --------------------------------------------------------------------------------------
def check_token_ids(tokens: Iterable[int], what: str = "token_ids",
                    error: type[InvalidInputError] = InvalidInputError) -> list[int]:
    """``tokens`` as a list of plain ints, once every one is an int (a ``bool`` is not; numpy
    integers become ints) in ``0 .. 2**63 - 1``; else raise ``error`` naming the first bad one as
    ``what[i]``. A well-formed list of ints costs three C-level passes and is returned as is."""
    if isinstance(tokens, (str, bytes)):
        raise error(f"{what} must be a sequence of ints, got {type(tokens).__name__}")
    if type(tokens) is list:
        out = tokens
    else:
        try:
            out = list(tokens)
        except TypeError:
            raise error(f"{what} must be a sequence of ints, got {type(tokens).__name__}") from None
    if not out or (set(map(type, out)) <= _PLAIN_INT and _in_int64_range(out)):
        return out
    fixed = []
    for i, t in enumerate(out):
        if type(t) is not int and not isinstance(t, bool):
            with contextlib.suppress(TypeError):
                t = operator.index(t)
        if type(t) is not int or not 0 <= t <= MAX_TOKEN_ID:
            raise error(f"{what}[{i}] is {_describe(t)}: token ids must be ints in 0..2**63-1")
        fixed.append(t)
    return fixed


_PLAIN_INT = {int}
_LOW_BYTES = bytes(range(128))
_TOP_BYTE = slice(7, None, 8) if sys.byteorder == "little" else slice(0, None, 8)


def _in_int64_range(ints: list[int]) -> bool:
    """Are all these plain ints in 0..2**63-1? One C-level pass: packing into unsigned 64-bit
    words refuses negatives and values >= 2**64; no word may have its top bit set."""
    try:
        words = array.array("Q", ints)
    except OverflowError:
        return False
    return not words.tobytes()[_TOP_BYTE].translate(None, _LOW_BYTES)


def check_request_length(n: object, name: str = "output length") -> int:
    """A token count a request may ask for: ``0 .. MAX_REQUEST_TOKENS``."""
    return check_int(n, name, 0, MAX_REQUEST_TOKENS)


# -- memory -----------------------------------------------------------------------------------------
def physical_memory_bytes() -> int | None:
    """This machine's RAM in bytes (``None`` where the OS does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, OSError, ValueError):
        return None


def check_allocation(nbytes: int, what: str, limit: int | None, where: str) -> None:
    """Refuse to allocate ``nbytes`` for ``what`` when it exceeds ``limit`` bytes (the memory of
    ``where``: the RAM, or the GPU's memory). ``limit=None`` skips the check."""
    if limit is not None and nbytes > limit:
        raise InvalidInputError(
            f"{what} would take {nbytes:,} bytes but {where} has {limit:,} bytes: choose smaller sizes"
        )


# -- output folders and files -----------------------------------------------------------------------
def prepare_output_dir(path: str | os.PathLike, force: bool = False, flag: str = "--force") -> Path:
    """Create ``path`` as a folder to write into, or accept an existing empty one.

    Refused (:class:`InvalidInputError`, nothing written): ``path`` being a symbolic link or
    something that is not a folder, and a folder that already holds entries unless ``force``
    (then files in it are replaced by :func:`write_text_no_follow`, links in it never followed)."""
    out = Path(path)
    if out.is_symlink():
        raise InvalidInputError(f"output folder {str(out)!r} is a symbolic link; it is not followed")
    if out.exists():
        if not out.is_dir():
            raise InvalidInputError(f"output folder {str(out)!r} exists and is not a folder")
        if not force and any(out.iterdir()):
            raise InvalidInputError(f"output folder {str(out)!r} is not empty; pass {flag} to write into it anyway")
    else:
        out.mkdir(parents=True)
    return out


def prepare_output_file(path: str | os.PathLike, force: bool = False, flag: str = "--force") -> Path:
    """Accept ``path`` as a file to write: not a symbolic link, its folder existing; an existing
    file is refused unless ``force``. Nothing is written."""
    out = Path(path)
    if out.is_symlink():
        raise InvalidInputError(f"output file {str(out)!r} is a symbolic link; it is not followed")
    if out.exists():
        if not out.is_file():
            raise InvalidInputError(f"output file {str(out)!r} exists and is not a regular file")
        if not force:
            raise InvalidInputError(f"output file {str(out)!r} exists; pass {flag} to replace it")
    elif not out.parent.is_dir():
        raise InvalidInputError(f"output file {str(out)!r}: folder {str(out.parent)!r} does not exist")
    return out


def write_text_no_follow(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) as the file ``path`` without following a symbolic link there: the
    text goes to a new file beside it (created exclusively), which then replaces the entry
    ``path`` (a link is replaced, its target untouched). Returns the path."""
    path = Path(path)
    folder = path.parent
    if folder.is_symlink():
        raise InvalidInputError(f"{str(folder)!r} is a symbolic link; it is not followed")
    for attempt in range(100):
        tmp = folder / f".{path.name}.{os.getpid()}.{attempt}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o644)
        except FileExistsError:
            continue
        except OSError as exc:
            raise InvalidInputError(f"cannot write {str(path)!r}: {exc.strerror}") from None
        break
    else:
        raise InvalidInputError(f"cannot write {str(path)!r}: no free temporary name beside it")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        if path.is_dir() and not path.is_symlink():
            raise InvalidInputError(f"cannot write {str(path)!r}: it is a folder")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


# -- slot tensors -----------------------------------------------------------------------------------
def check_slot_tensor(value: object, name: str, one: bool = False) -> None:
    """``value`` must be a 1-D int64 tensor of slot ids (``one``: exactly one slot, any shape)."""
    import torch

    if not isinstance(value, torch.Tensor) or value.dtype != torch.int64:
        what = f"dtype {value.dtype}" if isinstance(value, torch.Tensor) else type(value).__name__
        raise InvalidInputError(f"{name} must be an int64 tensor of slot ids, got {what}")
    if one and value.numel() != 1:
        raise InvalidInputError(f"{name} must name exactly one state slot, got {value.numel()}")
    if not one and value.dim() != 1:
        raise InvalidInputError(f"{name} must be a 1-D tensor of slot ids, got shape {tuple(value.shape)}")
