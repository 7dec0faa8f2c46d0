"""The policy sweep: admission x eviction x cache sizes over one trace, into a tidy table.

    sizes = [pool_size("H200", 2296, 336), pool_size("H200 + 256 GB", 2296, 336, 21845, 3474)]
    frame = policy_sweep(trace, admissions=["page_aligned", "branch_point"],
                         evictions=["lru", "lru_consumed"], sizes=sizes)
    plot_policies(frame)                                  # hit rate and FLOPs saved against size

Each configuration is one :func:`himamba.sim.policy_replay.replay` of the whole trace on a fresh
cache (device tier only when a size has no host pools), one row of the frame: the policy pair, the
size's label and pools, then the replay's figures (hit rates, ``flops_saved``, bytes kept, speed,
evictions, ``accounting_ok``, ``violations``; ``alpha`` and ``alpha_window`` for ``flop_aware``) and ``error`` (``None`` when it ran: a configuration
that fails yields its error instead of stopping the sweep).

Where it runs: in this process by default; on a Dask cluster with ``client`` (a
``distributed.Client``) or ``address`` (a scheduler whose workers import himamba), or on a local
cluster of ``n_workers`` processes. The trace's items are scattered to the workers once. Every
name and size is checked here before anything runs. ``progress``: a tqdm bar over configurations.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from himamba.errors import InvalidInputError
from himamba.memory.model import ModelSpec
from himamba.sim import policy_replay
from himamba.sim.admission import parse_admission
from himamba.validate import check_int

if TYPE_CHECKING:
    import pandas as pd

SIZE_FIELDS = ("device_kv", "device_states", "host_kv", "host_states")
FIGURES = ("hit_rate", "hit_rate_tokens", "flops_saved", "kv_bytes_kept", "state_bytes_kept", "kv_bytes_kept_mean",
           "state_bytes_kept_mean", "evicted_kv", "evicted_states", "states_admitted", "host_hit_elements",
           "requests", "seconds", "requests_per_cpu_s", "accounting_ok", "violations")


def pool_size(label: str, device_kv: int, device_states: int, host_kv: int = 0, host_states: int = 0) -> dict[str, Any]:
    """One cache size of a sweep: pools in elements (blocks in block mode) and state slots; host
    pools of 0 mean the device tier alone."""
    if not isinstance(label, str) or not label:
        raise InvalidInputError(f"a size's label must be a non-empty str, got {label!r}")
    out: dict[str, Any] = {"size": label}
    for name, value, low in (("device_kv", device_kv, 1), ("device_states", device_states, 1),
                             ("host_kv", host_kv, 0), ("host_states", host_states, 0)):
        out[name] = check_int(value, f"size {label!r} {name}", low)
    return out


def policy_grid(admissions: Sequence[str], evictions: Sequence[str], sizes: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Every (admission, eviction, size), sizes varying fastest; names checked (eviction names by
    building a config with them), sizes given by :func:`pool_size` or as mappings of its arguments."""
    if isinstance(admissions, str) or isinstance(evictions, str):
        raise InvalidInputError("admissions and evictions are lists of names")
    if not admissions or not evictions or not sizes:
        raise InvalidInputError("a policy sweep needs at least one admission, one eviction and one size")
    checked = [_as_size(s) for s in sizes]
    names = [parse_admission(a).name for a in admissions]
    for eviction in dict.fromkeys(evictions):
        check_eviction(eviction)
    return [{"admission": a, "eviction": e, **s} for a in names for e in evictions for s in checked]


def _as_size(size: Mapping[str, Any]) -> dict[str, Any]:
    if not isinstance(size, Mapping) or not {"device_kv", "device_states"} <= set(size):
        raise InvalidInputError(f"a size is a mapping with device_kv and device_states (see pool_size), got {size!r}")
    extra = sorted(set(size) - {"size", "label", *SIZE_FIELDS})
    if extra:
        raise InvalidInputError(f"unknown size field(s) {extra}; known: {['size', *SIZE_FIELDS]}")
    return pool_size(size.get("size", size.get("label")), **{k: size[k] for k in SIZE_FIELDS if k in size})


def check_eviction(eviction: str) -> str:
    """``eviction`` when a cache can be built with it (``"lru"`` always), else InvalidInputError."""
    if not isinstance(eviction, str):
        raise InvalidInputError(f"eviction must be a policy name, got {eviction!r}")
    if eviction != policy_replay.DEFAULT_EVICTION:
        policy_replay.make_cache(1, 1, eviction=eviction)
    return eviction


def run_policy(index: int, params: Mapping[str, Any], items: policy_replay.PolicyItems,
               model: ModelSpec | None = None) -> dict[str, Any]:
    """One configuration of a sweep (a task): replay ``items`` on a fresh cache; figures only."""
    import torch

    torch.set_num_threads(1)
    row: dict[str, Any] = {"config": index, "error": None}
    try:
        cache = policy_replay.make_cache(params["device_kv"], params["device_states"], eviction=params["eviction"],
                                         host_kv=params["host_kv"], host_states=params["host_states"])
        figures = policy_replay.replay(cache, items, params["admission"], model=model)
        row.update({k: figures[k] for k in FIGURES})
        row["alpha"], row["alpha_window"] = figures.get("alpha"), figures.get("alpha_window")  # flop_aware only
    except Exception as exc:  # one failing configuration must not sink the sweep
        row["error"] = f"{type(exc).__name__}: {exc}"
    return row


def load_items(trace: Any, trace_format: str = "mooncake", limit: int | None = None) -> policy_replay.PolicyItems:
    """Policy items from ``trace``: items already made, a list of Mooncake requests, a list of
    ``(prompt_len, tokens)`` pairs, or a JSON-lines file (``trace_format`` ``"mooncake"`` or
    ``"tokens"``, the shared multi-turn trace); ``limit`` keeps the first requests of a file."""
    from himamba.sim.mooncake import MooncakeRequest, load_mooncake

    if isinstance(trace, policy_replay.PolicyItems):
        return trace
    if isinstance(trace, (str, Path)):
        if trace_format == "mooncake":
            return policy_replay.block_items(load_mooncake(trace, limit=limit))
        if trace_format == "tokens":
            from himamba.sim.trace_io import load_token_trace

            return policy_replay.token_items(load_token_trace(trace)[:limit])
        raise InvalidInputError(f"trace_format must be 'mooncake' or 'tokens', got {trace_format!r}")
    trace = list(trace)
    if trace and isinstance(trace[0], MooncakeRequest):
        return policy_replay.block_items(trace)
    if trace and isinstance(trace[0], tuple) and len(trace[0]) == 2:
        return policy_replay.token_items(trace)
    return policy_replay.check_items(trace)


def policy_sweep(trace: Any, *, admissions: Sequence[str] = ("sequence_end", "page_aligned", "branch_point"),
                 evictions: Sequence[str] = ("lru",), sizes: Sequence[Mapping[str, Any]],
                 model: ModelSpec | None = None, trace_format: str = "mooncake", limit: int | None = None,
                 client=None, address: str | None = None, n_workers: int = 0, memory_limit: str | int = "2GiB",
                 progress: bool | None = None) -> pd.DataFrame:
    """One replay of ``trace`` per (admission, eviction, size); the tidy frame of the module
    docstring, in grid order. ``model`` prices FLOPs and bytes (default Marconi's 7B hybrid)."""
    import pandas as pd

    configs = policy_grid(admissions, evictions, sizes)
    (model or ModelSpec.attention_mamba2_7b()).flop_coefficients()
    check_int(n_workers, "n_workers", 0)
    items = load_items(trace, trace_format, limit)
    show = len(configs) >= 4 if progress is None else progress
    if client is None and address is None and n_workers == 0:
        rows = _run_here(configs, items, model, show)
    else:
        rows = _run_on_dask(configs, items, model, show, client, address, n_workers, memory_limit)
    rows.sort(key=lambda r: r["config"])
    frame = pd.DataFrame([{**configs[r["config"]], **r} for r in rows])
    return frame.drop(columns="config")


def _run_here(configs: list[dict[str, Any]], items, model, show: bool) -> list[dict[str, Any]]:
    bar = None
    if show:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(configs), unit="config", desc="policies")
    rows = []
    for i, params in enumerate(configs):
        rows.append(run_policy(i, params, items, model))
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return rows


def _run_on_dask(configs, items, model, show: bool, client, address, n_workers: int, memory_limit):
    import uuid

    from himamba.sim.sweep import connect, gather_rows

    client, owned = connect(client, address, max(n_workers, 1), memory_limit)
    try:
        shipped = client.scatter(items, broadcast=True)
        tag = uuid.uuid4().hex[:12]
        futures = [client.submit(run_policy, i, p, shipped, model, pure=False, key=f"himamba-policies-{tag}-{i}")
                   for i, p in enumerate(configs)]
        return gather_rows(futures, show, desc="policies")
    finally:
        for c in owned:
            c.close()


def h200_sizes(host_gb: Sequence[float] = (0, 256, 1024), model: ModelSpec | None = None) -> list[dict[str, Any]]:
    """The sizes of notebook 08's H200 example, in blocks: ``model`` (default Qwen3-Next-80B, fp8
    weights) on one 141 GB H200, 90% of the memory left to the cache, device pools alone and with
    ``host_gb`` of host memory (:func:`himamba.memory.sizing.size_pools`)."""
    from himamba.memory.sizing import size_pools

    model = model or ModelSpec.qwen3_next_80b_a3b()
    out = []
    for gb in host_gb:
        s = size_pools(model, gpu_gb=141, weight_bytes_per_param=1, cache_fraction=0.9, host_gb=gb)
        label = "H200" if not gb else f"H200 + {gb:g} GB host"
        out.append(pool_size(label, s.device_blocks, s.device_state_slots, s.host_blocks, s.host_state_slots))
    return out


#: Eviction policies a cache may know (``lru`` always; the others once ``CacheConfig`` has them).
EVICTIONS = ("lru", "lru_consumed", "flop_aware", "farthest_next_use")


def available_evictions(names: Sequence[str] = EVICTIONS) -> list[str]:
    """Those of ``names`` a cache can be built with here (``lru`` always)."""
    out = []
    for name in names:
        try:
            check_eviction(name)
        except (InvalidInputError, TypeError, ValueError):
            continue
        out.append(name)
    return out


def shared_token_trace(n_requests: int = 2000, seed: int = 0) -> list[tuple[int, list[int]]] | None:
    """The shared multi-turn token trace (``(prompt_len, tokens)`` pairs) written by
    ``shared/bench/multiturn_trace.py`` beside the checkout (found as
    :func:`himamba.sim.mooncake.find_trace` finds traces), run in a child process; ``None`` when
    the script is not there."""
    import subprocess
    import sys
    import tempfile

    from himamba.sim.trace_io import load_token_trace

    check_int(n_requests, "n_requests", 1)
    check_int(seed, "seed", 0)
    here = Path(__file__).resolve().parents[2]
    roots = [here.parent, *Path.cwd().resolve().parents, Path.cwd()]
    script = next((p / "shared" / "bench" / "multiturn_trace.py" for p in roots
                   if (p / "shared" / "bench" / "multiturn_trace.py").is_file()), None)
    if script is None:
        return None
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "trace.jsonl"
        with out.open("w", encoding="utf-8") as fh:
            subprocess.run([sys.executable, str(script), "--requests", str(n_requests), "--seed", str(seed)],
                           stdout=fh, check=True, timeout=300)
        return load_token_trace(out)
