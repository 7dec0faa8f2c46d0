"""``himamba bench replay``: the shared replay protocol over a trace file, figures as one JSON line.

Token mode (the shared multi-turn trace, ``{"prompt_len": int, "tokens": [...]}`` lines)::

    himamba bench replay --trace trace.jsonl [--tiered] [--repeat 3] [--record]

Block mode (a Mooncake trace, :mod:`himamba.sim.mooncake`; one KV slot per 512-token block)::

    himamba bench replay --trace conversation_trace.jsonl --format mooncake --checkpoint page_aligned \
        --device-blocks 4000 --state-slots 600 [--tiered --host-blocks 20000 --host-state-slots 3000]

The protocol is :func:`himamba.sim.protocol.replay`. The printed speed is the median over
``--repeat`` runs; the other figures are the last run's (every run gives the same ones). In block
mode the line also has the matching ``ceiling`` (unbounded cache, same policy), and with the
tiered cache the bytes moved priced at ``--model``'s real sizes (``model_bytes_*``: a block at
512 tokens of its KV, a state at its slot size). ``--record`` also times each run with a
Recorder-like listener (every event kept, no snapshots) and adds ``record_requests_per_s``,
``record_overhead`` (median of per-pair time ratios) and ``record_events``.
Exit status 0 when the pools balance and no invariant is violated, 1 otherwise. Before any run,
a request that needs more device KV than the whole pool is refused by its file and line, and
``--state-slots`` must be at least 2 (a request keeps its matched prefix's state while it takes
one); a shortage the replay still meets ends in one clear line, not a traceback.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys

from himamba.errors import InvalidInputError
from himamba.sim import mooncake, protocol
from himamba.sim.trace_io import json_lines, load_token_trace

FORMATS = ("trace", "mooncake")


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="himamba bench replay", description=__doc__.splitlines()[0])
    ap.add_argument("--trace", required=True, help="JSON-lines trace file")
    ap.add_argument("--format", choices=FORMATS, default="trace",
                    help="trace: prompt_len + tokens per line (token mode, default); mooncake: block mode")
    ap.add_argument("--checkpoint", choices=mooncake.CHECKPOINTS, default="sequence_end",
                    help="block mode: what a request inserts (default sequence_end)")
    ap.add_argument("--device-blocks", type=int, default=None, help="block mode: device KV blocks")
    ap.add_argument("--host-blocks", type=int, default=None, help="block mode: host KV blocks (default 2x device)")
    ap.add_argument("--device-tokens", type=int, default=None,
                    help=f"token mode: device KV tokens (default {protocol.PROTOCOL['device_kv_tokens']})")
    ap.add_argument("--host-tokens", type=int, default=None, help="token mode: host KV tokens (default 2x device)")
    ap.add_argument("--state-slots", type=int, default=protocol.PROTOCOL["device_mamba_slots"],
                    help="device state slots (default %(default)s)")
    ap.add_argument("--host-state-slots", type=int, default=None, help="host state slots (default 2x device)")
    ap.add_argument("--tiered", action="store_true", help="replay through HiMambaRadixCache")
    ap.add_argument("--write-policy", default="write_through", help="tiered cache's write policy")
    ap.add_argument("--model", default="qwen3-next-80b-a3b", help="block mode: preset pricing the bytes moved")
    ap.add_argument("--repeat", type=int, default=3, help="runs; the reported speed is the median (default 3)")
    ap.add_argument("--limit", type=int, default=None, help="replay only the first N requests")
    ap.add_argument("--record", action="store_true", help="also time each run with a Recorder-like listener")
    return ap


class EventLog:
    """A Recorder-like listener without snapshots: keeps every event the cache emits."""

    def __init__(self) -> None:
        self.events: list = []

    def __call__(self, event) -> None:
        self.events.append(event)


def _check(args: argparse.Namespace) -> None:
    block = args.format == "mooncake"
    for flag, value in (("--device-blocks", args.device_blocks), ("--host-blocks", args.host_blocks)):
        if value is not None and not block:
            raise InvalidInputError(f"{flag} counts Mooncake blocks: use it with --format mooncake")
    for flag, value in (("--device-tokens", args.device_tokens), ("--host-tokens", args.host_tokens)):
        if value is not None and block:
            raise InvalidInputError(f"{flag} counts tokens: block mode (--format mooncake) takes --device-blocks")
    if block and args.device_blocks is None:
        raise InvalidInputError("--format mooncake needs --device-blocks N (the device KV pool, in blocks)")
    for flag, value in (("--device-blocks", args.device_blocks), ("--host-blocks", args.host_blocks),
                        ("--device-tokens", args.device_tokens), ("--host-tokens", args.host_tokens),
                        ("--state-slots", args.state_slots), ("--host-state-slots", args.host_state_slots),
                        ("--repeat", args.repeat), ("--limit", args.limit)):
        if value is not None and value < 1:
            raise InvalidInputError(f"{flag} must be at least 1, got {value}")
    if not args.tiered and (args.host_blocks or args.host_tokens or args.host_state_slots):
        raise InvalidInputError("host pool sizes need --tiered")
    if args.state_slots < 2:
        raise InvalidInputError(f"--state-slots must be at least 2 (a request keeps its matched prefix's state while "
                                f"it takes one of its own), got {args.state_slots}")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _check(args)
    import torch

    from himamba.memory.model import ModelSpec

    torch.set_num_threads(1)
    block = args.format == "mooncake"
    extra: dict = {"format": args.format}
    if block:
        trace = mooncake.load_mooncake(args.trace, limit=args.limit)
        items = protocol.block_items(trace, args.checkpoint)
        extra.update(checkpoint=args.checkpoint, ceiling=mooncake.ceilings(trace)[f"ceiling_{args.checkpoint}"])
        model = ModelSpec.preset(args.model)
        sizes = (args.device_blocks, args.host_blocks)
        del trace
    else:
        items = protocol.token_items(load_token_trace(args.trace)[: args.limit])
        sizes = (args.device_tokens or protocol.PROTOCOL["device_kv_tokens"], args.host_tokens)

    _check_fits(args, items, sizes[0])

    def cache():
        return protocol.make_cache(sizes[0], args.state_slots, tiered=args.tiered, host_kv=sizes[1],
                                   host_states=args.host_state_slots, write_policy=args.write_policy)

    gc.collect()
    gc.freeze()  # the trace's ints are long-lived: keep the collector off them
    runs, recorded, ratios, events = [], [], [], 0
    for _ in range(args.repeat):  # with --record, plain and recorded runs alternate (same load)
        c = cache()
        runs.append(_replay_or_refuse(c, items))
        if block and args.tiered:
            extra.update(model_bytes(c.cache_controller, model))
        del c
        if args.record:
            log = EventLog()
            recorded.append(_replay_or_refuse(cache(), items, listener=log))
            ratios.append(recorded[-1]["seconds"] / runs[-1]["seconds"])
            events = len(log.events)
            del log
    best = {**runs[-1], **extra}
    best["requests_per_s"] = statistics.median(r["requests_per_s"] for r in runs)
    best["tree_ops_per_s"] = statistics.median(r["tree_ops_per_s"] for r in runs)
    best["requests_per_cpu_s"] = statistics.median(r["requests_per_cpu_s"] for r in runs)
    best["runs"] = len(runs)
    best["cache"] = "HiMambaRadixCache" if args.tiered else "MambaRadixCache"
    if args.record:
        best["record_requests_per_s"] = statistics.median(r["requests_per_s"] for r in recorded)
        best["record_overhead"] = round(statistics.median(ratios), 2)
        best["record_events"] = events
        best["record_same_figures"] = all(r["hit_rate"] == best["hit_rate"] for r in recorded)
    print(json.dumps(best))
    sys.stdout.flush()
    return 0 if best["accounting_ok"] and best["violations"] == 0 else 1


def _check_fits(args: argparse.Namespace, items: list, device_kv: int) -> None:
    """Refuse a trace with a request that inserts more than the whole device KV pool (it could
    never be served, whatever is evicted): :class:`InvalidInputError` naming its file and line."""
    for i, (_, _, insert_len, _) in enumerate(items):
        if insert_len > device_kv:
            block = args.format == "mooncake"
            unit, flag = ("blocks", "--device-blocks") if block else ("tokens", "--device-tokens")
            raise InvalidInputError(
                f"{_record_where(args.trace, i)}: request {i} needs {insert_len} device KV {unit}, more than the "
                f"whole pool ({flag} {device_kv}); pass a larger {flag} or leave the request out")


def _replay_or_refuse(cache, items: list, listener=None) -> dict:
    """:func:`protocol.replay`, its documented shortage (a request that cannot get memory even
    after eviction) turned into an :class:`InvalidInputError` asking for larger pools."""
    try:
        return protocol.replay(cache, items, listener=listener)
    except RuntimeError as exc:
        if "cannot allocate" not in str(exc):
            raise
        raise InvalidInputError(f"the pools are too small for this trace: {exc} (pass larger pool sizes)") from None


def _record_where(path: str, index: int) -> str:
    """``file:line`` of the ``index``-th record of a JSON-lines file (blank lines skipped)."""
    for i, (where, _) in enumerate(json_lines(path)):
        if i == index:
            return where
    return str(path)


def model_bytes(cc, model, block_tokens: int = mooncake.BLOCK_TOKENS) -> dict[str, int]:
    """Bytes a transfer controller moved in block mode, priced at ``model``'s sizes: each KV slot
    is a block of ``block_tokens`` tokens, each state one slot of the model."""
    block = block_tokens * model.kv_bytes_per_token
    return {"model": model.name,
            "model_bytes_device_to_host": cc.kv_slots_device_to_host * block + cc.states_device_to_host * model.state_bytes_per_slot,
            "model_bytes_host_to_device": cc.kv_slots_host_to_device * block + cc.states_host_to_device * model.state_bytes_per_slot}


if __name__ == "__main__":
    raise SystemExit(main())
