"""sweep: replay one workload under many cache configurations, in parallel on dask.distributed.

    grid = {"device_kv_tokens": [50_000, 100_000], "write_policy": ["write_through", "write_back"]}
    frame = sweep(grid, hm.sim.multi_turn_chat(2000))     # one row per configuration

``grid`` is either a mapping of parameter -> values (every combination, first key varying
slowest) or a list of parameter dicts. Parameters are :class:`~himamba.CacheConfig` fields
(``device_kv_tokens``, ``host_kv_tokens``, ``device_mamba_slots``, ``host_mamba_slots``,
``page_size``, ``write_policy``, ``cascade_rule``, ``legacy``, ``load_back_threshold``, ...), the
cache kind ``cache`` (``"tiered"`` or ``"device"``) and the engine's ``chunk_size``,
``decode_tokens``, ``max_running``, ``load_back_quota``, ``evict_headroom``. ``base`` gives
defaults for every configuration. Every configuration is checked on the client first, so a bad
value fails before anything runs.

Memory: the workload is packed (numpy, ~4 bytes a token) and scattered to the workers once;
each task builds its cache inside the worker on the CPU with the tiny :class:`ModelSpec`, keeps
no per-step rows, and returns only summary numbers. A configuration that fails (e.g. pools too
small for one request) yields a row with its ``error`` instead of stopping the sweep.

Cluster: ``client`` (an existing ``distributed.Client``), else ``address`` (a scheduler to
connect to; its workers must be able to import himamba), else a LocalCluster of ``n_workers``
single-threaded worker processes with ``memory_limit`` each, closed afterwards.
"""

from __future__ import annotations

import dataclasses
import gc
import itertools
import logging
import resource
import sys
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from himamba.cache.config import CacheConfig
from himamba.errors import InvalidInputError
from himamba.sim.request import PackedWorkload, SimRequest, pack

if TYPE_CHECKING:
    import pandas as pd

ENGINE_PARAMS = ("chunk_size", "decode_tokens", "max_running", "load_back_quota", "evict_headroom", "checkpoint",
                 "step_ms")
CONFIG_PARAMS = tuple(f.name for f in dataclasses.fields(CacheConfig) if f.name not in ("device", "model"))
PARAMS = ("cache", *CONFIG_PARAMS, *ENGINE_PARAMS)
# A sweep replays whole traces, so its engine decodes in bigger batches and runs more requests
# at once than Engine's own defaults (16 tokens, 4 requests), which suit stepping one by one.
DEFAULT_ENGINE = {"chunk_size": 512, "decode_tokens": 32, "max_running": 8}


def expand_grid(grid: Mapping[str, Sequence[Any]] | Sequence[Mapping[str, Any]],
                base: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """The configurations of ``grid`` (a mapping: every combination; a sequence: as listed),
    each merged over ``base``. Unknown parameter names raise InvalidInputError."""
    if isinstance(grid, Mapping):
        keys = list(grid)
        for k in keys:
            if isinstance(grid[k], (str, bytes)) or not isinstance(grid[k], Iterable):
                raise InvalidInputError(f"grid[{k!r}] must be a list of values, got {grid[k]!r}")
        combos = [dict(zip(keys, values, strict=True)) for values in itertools.product(*(list(grid[k]) for k in keys))]
    else:
        combos = [dict(c) for c in grid]
    out = []
    for c in combos:
        params = {**(base or {}), **c}
        unknown = sorted(set(params) - set(PARAMS))
        if unknown:
            raise InvalidInputError(f"unknown sweep parameter(s) {unknown}; known: {list(PARAMS)}")
        out.append(params)
    if not out:
        raise InvalidInputError("the grid has no configuration")
    return out


def build(params: Mapping[str, Any]):
    """(cache, engine keyword arguments) for one configuration, on the CPU with the tiny model."""
    from himamba.cache.hi_mamba import HiMambaRadixCache
    from himamba.cache.mamba import MambaRadixCache

    kind, config, engine = _parts(params)
    return (HiMambaRadixCache if kind == "tiered" else MambaRadixCache)(config), engine


def _parts(params: Mapping[str, Any]) -> tuple[str, CacheConfig, dict[str, Any]]:
    """(cache kind, its CacheConfig, engine keyword arguments) of one configuration, every value
    checked (InvalidInputError otherwise); builds no pools."""
    from himamba.sim.engine import check_engine_args

    kind = params.get("cache", "tiered")
    if kind not in ("tiered", "device"):
        raise InvalidInputError(f"cache must be 'tiered' or 'device', got {kind!r}")
    config = CacheConfig(device="cpu", **{k: v for k, v in params.items() if k in CONFIG_PARAMS})
    engine = {**DEFAULT_ENGINE, **{k: v for k, v in params.items() if k in ENGINE_PARAMS}}
    check_engine_args(**engine)
    return kind, config, engine


def run_config(index: int, params: dict[str, Any], workload: PackedWorkload, probe: bool = True) -> dict[str, Any]:
    """Replay ``workload`` under one configuration (a sweep task); summary numbers only."""
    import torch

    from himamba.cache.integrity import check_integrity
    from himamba.cache.invariants import check_invariants
    from himamba.sim.engine import Engine

    torch.set_num_threads(1)
    row: dict[str, Any] = {"config": index, "error": None}
    start = time.perf_counter()
    try:
        cache, engine_kwargs = build(params)
        with Engine(cache, probe=probe, keep_steps=False, keep_requests=False, **engine_kwargs) as engine:
            metrics = engine.run(workload, progress=False)
        row.update(metrics.totals())
        row["violations"] = len(check_invariants(cache, held_kv=0, held_states=0))
        row["integrity_violations"] = len(check_integrity(cache))
        del cache, engine, metrics
    except Exception as exc:  # one bad configuration must not sink the sweep
        row["error"] = f"{type(exc).__name__}: {exc}"
    row["seconds"] = round(time.perf_counter() - start, 3)
    gc.collect()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    row["worker_peak_rss_mb"] = round(peak / (2**20 if sys.platform == "darwin" else 2**10), 1)
    return row


def sweep(grid: Mapping[str, Sequence[Any]] | Sequence[Mapping[str, Any]],
          workload: Sequence[SimRequest] | PackedWorkload | str | Path, *, client=None, address: str | None = None,
          base: Mapping[str, Any] | None = None, n_workers: int = 2, memory_limit: str | int = "1GiB",
          probe: bool = True, progress: bool | None = None, trace_format: str = "jsonl",
          limit: int | None = None) -> pd.DataFrame:
    """One replay of ``workload`` per configuration of ``grid``; returns one row per
    configuration: its parameters, then every total of :meth:`SimMetrics.totals`, ``violations``
    and ``integrity_violations`` (checked at the end), ``seconds``, ``worker_peak_rss_mb`` and
    ``error`` (None when it ran). ``workload`` may be a list of requests, a PackedWorkload or a
    JSON-lines file: ``trace_format="jsonl"`` (native or shared trace lines) or ``"mooncake"`` (a
    Mooncake trace in block mode, :func:`himamba.sim.mooncake.to_requests`: pool sizes count blocks,
    and the engine's ``checkpoint`` and ``step_ms`` replay its policies and arrival times); ``limit``
    keeps its first requests. ``probe=False`` skips eviction counting (faster; eviction columns are 0).
    ``progress``: a tqdm bar over configurations (default: shown from 8 configurations on).
    """
    import pandas as pd

    configs = expand_grid(grid, base)
    for params in configs:  # every value checked on the client, before anything is shipped
        _parts(params)
    if trace_format not in ("jsonl", "mooncake"):
        raise InvalidInputError(f"trace_format must be 'jsonl' or 'mooncake', got {trace_format!r}")
    if isinstance(workload, (str, Path)):
        if trace_format == "mooncake":
            from himamba.sim.mooncake import load_mooncake, to_requests

            workload = to_requests(load_mooncake(workload, limit=limit))
        else:
            from himamba.sim.trace_io import load_jsonl

            workload = load_jsonl(workload)[:limit]
    packed = pack(workload)
    client, owned = connect(client, address, n_workers, memory_limit)
    try:
        shipped = client.scatter(packed, broadcast=True)
        tag = uuid.uuid4().hex[:12]
        futures = [client.submit(run_config, i, p, shipped, probe, pure=False, key=f"himamba-sweep-{tag}-{i}")
                   for i, p in enumerate(configs)]
        rows = gather_rows(futures, len(configs) >= 8 if progress is None else progress)
    finally:
        for c in owned:
            c.close()
    rows.sort(key=lambda r: r["config"])
    param_cols = list(dict.fromkeys(k for p in configs for k in p))
    records = [{**{k: _display(configs[r["config"]].get(k)) for k in param_cols}, **r} for r in rows]
    frame = pd.DataFrame(records)
    return frame.set_index("config")


# -- helpers ------------------------------------------------------------------------------------------
def connect(client, address: str | None, n_workers: int, memory_limit: str | int):
    """(client, things to close afterwards): ``client`` itself, else a client of the scheduler at
    ``address``, else a LocalCluster of ``n_workers`` single-threaded processes and its client."""
    if client is not None:
        return client, []
    from distributed import Client, LocalCluster

    if address is not None:
        c = Client(address)
        return c, [c]
    # the dashboard on a free loopback port: ``None`` still asks for the default 8787, and a second
    # sweep (another notebook's kernel) would then warn that it is taken
    cluster = LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True, memory_limit=memory_limit,
                           dashboard_address="127.0.0.1:0", silence_logs=logging.ERROR)
    c = Client(cluster)
    return c, [c, cluster]


def gather_rows(futures: list, progress: bool, desc: str = "sweep") -> list[dict[str, Any]]:
    """The results of ``futures`` in the order they finish, each future released once read;
    ``progress``: a tqdm bar (``desc``) over them."""
    from distributed import as_completed

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(futures), unit="config", desc=desc)
    rows = []
    for future in as_completed(futures):
        rows.append(future.result())
        future.release()
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return rows


def _display(value: Any) -> Any:
    """Grid values as frame cells: sets of legacy ids become sorted comma-separated text."""
    if isinstance(value, (set, frozenset, list, tuple)):
        return ",".join(sorted(map(str, value)))
    return value
