"""``himamba bench policies``: admission x eviction x cache sizes over a trace, one JSON line a row.

    himamba bench policies --trace conversation_trace.jsonl \
        --admission page_aligned --admission branch_point --eviction lru [--eviction lru_consumed] \
        [--size H200=2296,336 --size "H200 + 256 GB=2296,336,21845,3474"] [--limit 3000] \
        [--address tcp://scheduler:8786 | --workers 2] [--out table.csv] [--plot curves.png]

Without ``--size`` a Mooncake trace runs at the sizes of notebook 08's H200 example
(:func:`himamba.sim.policy_sweep.h200_sizes`) and a token trace (``--format tokens``, the shared
multi-turn trace) at a quarter, half and all of the protocol's 300,000 KV tokens and 600 states.
Each row is one configuration (:func:`himamba.sim.policy_sweep.policy_sweep`); FLOPs and bytes are
priced at ``--model`` (default Marconi's Attention-Mamba2-7B). Exit status 0 when every
configuration ran with balanced pools and no invariant violated, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import math
import sys

from himamba.errors import InvalidInputError
from himamba.sim.admission import NAMES

RATES = ("hit_rate", "hit_rate_tokens", "flops_saved", "seconds", "requests_per_cpu_s")


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="himamba bench policies", description=__doc__.splitlines()[0])
    ap.add_argument("--trace", required=True, help="JSON-lines trace file")
    ap.add_argument("--format", choices=("mooncake", "tokens"), default="mooncake",
                    help="mooncake: block mode (default); tokens: the shared multi-turn trace")
    ap.add_argument("--admission", action="append", default=None, metavar="NAME",
                    help=f"admission policy, repeatable ({', '.join(NAMES)}; default sequence_end, page_aligned, branch_point)")
    ap.add_argument("--eviction", action="append", default=None, metavar="NAME",
                    help="eviction policy, repeatable (default lru)")
    ap.add_argument("--size", action="append", default=None, metavar="LABEL=KV,STATES[,HOST_KV,HOST_STATES]",
                    help="a cache size, repeatable: device KV (blocks or tokens) and state slots, optional host pools")
    ap.add_argument("--model", default="attention-mamba2-7b", help="preset pricing FLOPs and bytes")
    ap.add_argument("--limit", type=int, default=None, help="replay only the first N requests")
    ap.add_argument("--address", default=None, help="a Dask scheduler to run on")
    ap.add_argument("--workers", type=int, default=0, help="run on a local Dask cluster of N processes (default: here)")
    ap.add_argument("--out", default=None, help="also write the table as CSV here")
    ap.add_argument("--plot", default=None, help="also draw hit rate and FLOPs saved against size into this PNG")
    ap.add_argument("--force", action="store_true", help="replace --out / --plot files that exist")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    return ap


def parse_size(text: str) -> dict:
    """``LABEL=KV,STATES[,HOST_KV,HOST_STATES]`` as a size of :func:`~himamba.sim.policy_sweep.pool_size`."""
    from himamba.sim.policy_sweep import pool_size

    label, sep, numbers = text.rpartition("=")
    parts = numbers.split(",")
    if not sep or not label or len(parts) not in (2, 4) or not all(p.strip().isdigit() for p in parts):
        raise InvalidInputError(f"--size must be LABEL=KV,STATES[,HOST_KV,HOST_STATES] with whole numbers, got {text!r}")
    return pool_size(label, *(int(p) for p in parts))


def _cell(column: str, value: object) -> object:
    """A frame cell as JSON: NaN (a configuration that failed) as null, and counts as ints (a
    column with a failed row is float in the frame)."""
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if column not in RATES and value.is_integer():
            return int(value)
    return value


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from himamba.memory.model import ModelSpec
    from himamba.sim import policy_sweep
    from himamba.validate import prepare_output_file

    if args.limit is not None and args.limit < 1:
        raise InvalidInputError(f"--limit must be at least 1, got {args.limit}")
    outputs = [prepare_output_file(p, args.force) for p in (args.out, args.plot) if p is not None]
    if args.size:
        sizes = [parse_size(s) for s in args.size]
    elif args.format == "mooncake":
        sizes = policy_sweep.h200_sizes()
    else:
        sizes = [policy_sweep.pool_size(f"{kv:,} tokens", kv, states) for kv, states in
                 ((75_000, 150), (150_000, 300), (300_000, 600))]
    frame = policy_sweep.policy_sweep(
        args.trace, trace_format=args.format, limit=args.limit, sizes=sizes,
        admissions=args.admission or ("sequence_end", "page_aligned", "branch_point"), evictions=args.eviction or ("lru",),
        model=ModelSpec.preset(args.model), address=args.address, n_workers=args.workers, progress=not args.no_progress)
    for row in frame.to_dict("records"):
        print(json.dumps({k: _cell(k, v) for k, v in row.items()}))
    sys.stdout.flush()
    if args.out:
        frame.to_csv(outputs[0], index=False)
    if args.plot:
        from himamba.sim.metrics import plot_policies

        plot_policies(frame).savefig(outputs[-1], dpi=100)
    ok = frame["error"].isna().all() and frame["accounting_ok"].all() and (frame["violations"] == 0).all()
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
