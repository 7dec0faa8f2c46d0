"""A catalogue of bad inputs, by class, each on a cache with some history (or on a file or a folder).

Every :class:`Case` builds what it needs and returns ``(cache, call, requests)``: ``call()`` must
raise a clear error (a :class:`ValueError` subclass of the project) and leave the cache (and the
requests) exactly as they were. Cases without a cache (configuration, readers, the command line)
return ``cache=None`` and check their own "nothing changed" (files untouched) in ``after``.

Classes: ``ownership``, ``atomicity``, ``data loss``, ``silent``, ``unclear``, ``hangs``,
``output folders``, and the hostile cases ``command line`` (the ``himamba`` command fed hostile
files or a Ctrl-C) and ``small holes`` (foreign acks, extra keys that cannot key entries apart,
freeing the tree's slots). ``tests/test_bad_input_catalogue.py`` runs every case;
``bench/bad_input.py`` counts what each class gets (ok, unclear, silent, corrupt, crash, insecure).

Command-line cases run :func:`himamba.cli.main` (or the command in a process of its own, for a
Ctrl-C): a clean end becomes the project error the catalogue expects (status 2 with one line
``himamba: error: ...`` naming what the case says it must, or status 130 after a Ctrl-C with a
partial report and no traceback); an exception escaping the command is a :class:`Crash`, a
message that misses what it must name is an :class:`UnclearEnd`. A write outside the output
folder raises :class:`Insecure`. A case with ``open`` set still fails for a reason that is
outside the files it tests (the sentence says what is missing).
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from helpers import alloc_kv, alloc_state, make_cache, node_at, put

import himamba as hm


@dataclass
class Case:
    klass: str
    name: str
    build: Callable[[Path], tuple]  # tmp folder -> (cache | None, call, requests[, after | None[, named]])
    open: str | None = None  # why the case still fails, when it does for a reason outside its files


CASES: list[Case] = []


def case(klass: str, name: str, open: str | None = None):
    def register(build):
        CASES.append(Case(klass, name, build, open))
        return build
    return register


class Crash(Exception):
    """The command line ended in a traceback (an exception escaped it)."""


class UnclearEnd(Exception):
    """The command line ended without the one clear line (or the status) the case asks for."""


class Insecure(AssertionError):
    """A file outside the output folder was written (a link was followed)."""


# -- caches with some history ---------------------------------------------------------------------------
def device_cache(ps: int = 1) -> hm.MambaRadixCache:
    """Shared prefixes, a split, a tombstone and a lock held by a "request"."""
    cache = make_cache(page_size=ps, device_kv_tokens=64 * ps, device_mamba_slots=12)
    for seq in ([1, 2, 3, 4], [1, 2, 3, 4, 5, 6], [1, 2, 7, 8], [9, 9, 9]):
        put(cache, [t for t in seq for _ in range(ps)])
    cache.inc_lock_ref(node_at(cache, [t for t in (1, 2, 7, 8) for _ in range(ps)]))
    return cache


def tiered_cache(manual_acks: bool = False, storage: bool = False) -> hm.HiMambaRadixCache:
    """Backed-up nodes, a host-only node (its device copy evicted) and, with manual acks, nothing
    in flight yet."""
    cache = hm.HiMambaRadixCache(hm.CacheConfig(device="cpu", device_kv_tokens=32, host_kv_tokens=128,
                                                device_mamba_slots=8, host_mamba_slots=16, load_back_threshold=1,
                                                write_policy="write_through_selective",
                                                enable_storage=storage), manual_acks=manual_acks)
    for seq in ([1, 2, 3, 4], [1, 2, 3, 4, 5, 6], [7, 8, 9]):
        put(cache, seq)
        put(cache, seq)  # the second hit writes it through to host
    for ack in cache.cache_controller.in_flight():
        cache.cache_controller.complete(ack)
    cache.check_hicache_events()
    if storage:
        for op in list(cache.storage.ops):
            cache.storage.complete(op)
        cache.check_hicache_events()
    cache.evict(cache.total_size())  # backed-up leaves go to host
    return cache


def request(cache, tokens, protected: int = 0) -> hm.Request:
    """A finished request that reuses ``protected`` tokens of the tree (locked) and owns the rest."""
    m = cache.match_prefix(tokens[:protected]) if protected else None
    prefix = m.device_indices if m else torch.empty(0, dtype=torch.int64)
    assert len(prefix) == protected, (len(prefix), protected)
    last = m.last_device_node if m else None
    if last is not None:
        cache.inc_lock_ref(last)
    kv = torch.cat((prefix, alloc_kv(cache, tokens[protected:], protected)))
    return hm.Request(list(tokens), kv, alloc_state(cache, tokens), last_node=last, cache_protected_len=protected)


def _owned_kv(cache, tokens) -> torch.Tensor:
    return node_at(cache, tokens).value


# -- ownership -------------------------------------------------------------------------------------------
@case("ownership", "insert: value names slots another tree node owns")
def _(tmp):
    c = device_cache()
    slot = alloc_state(c, [40, 41])
    return c, lambda: c.insert([40, 41], _owned_kv(c, [9, 9, 9])[:2], slot), ()


@case("ownership", "insert: mamba_value is a tree node's state slot")
def _(tmp):
    c = device_cache()
    kv = alloc_kv(c, [40], 0)
    return c, lambda: c.insert([40], kv, node_at(c, [9, 9, 9]).mamba_value), ()


@case("ownership", "insert: prev_prefix_len claims fresh slots as the tree's")
def _(tmp):
    c = device_cache()
    kv, slot = alloc_kv(c, [40, 41], 0), alloc_state(c, [40, 41])
    return c, lambda: c.insert([40, 41], kv, slot, prev_prefix_len=2), ()


@case("ownership", "insert: prev_prefix_len claims tree slots for a key that leaves the tree's path")
def _(tmp):
    c = device_cache()
    tree = c.match_prefix([1, 2, 3, 4]).device_indices  # four slots the tree owns
    slot = alloc_state(c, [1, 2, 40, 41])
    return c, lambda: c.insert([1, 2, 40, 41], tree.clone(), slot, prev_prefix_len=4), ()


@case("ownership", "insert: prev_prefix_len is a float")
def _(tmp):
    c = device_cache()
    kv, slot = alloc_kv(c, [40, 41], 0), alloc_state(c, [40, 41])
    return c, lambda: c.insert([40, 41], kv, slot, prev_prefix_len=0.0), ()


@case("ownership", "insert: page size 4, value slots of another node")
def _(tmp):
    c = device_cache(4)
    slot = alloc_state(c, [40] * 4)
    return c, lambda: c.insert([40] * 4, _owned_kv(c, [9] * 12)[:4], slot), ()


@case("ownership", "cache_finished_req: the running state slot is a tree node's")
def _(tmp):
    c = device_cache()
    req = request(c, [50, 51])
    c.mamba_pool.free(req.mamba_pool_idx)
    req.mamba_pool_idx = node_at(c, [9, 9, 9]).mamba_value.clone()
    return c, lambda: c.cache_finished_req(req), (req,)


@case("ownership", "cache_finished_req: a KV slot past the protected part is a tree node's")
def _(tmp):
    c = device_cache()
    req = request(c, [50, 51])
    c.kv_pool.free(req.kv_indices[1:])
    req.kv_indices = torch.cat((req.kv_indices[:1], _owned_kv(c, [9, 9, 9])[:1]))
    return c, lambda: c.cache_finished_req(req, is_insert=False), (req,)


@case("ownership", "cache_finished_req: cache_protected_len=-1 without insert")
def _(tmp):
    c = device_cache()
    req = request(c, [1, 2, 3, 4, 60], protected=4)
    req.cache_protected_len = -1
    return c, lambda: c.cache_finished_req(req, is_insert=False), (req,)


@case("ownership", "cache_finished_req: cache_protected_len beyond the KV")
def _(tmp):
    c = device_cache()
    req = request(c, [1, 2, 3, 4, 60], protected=4)
    req.cache_protected_len = 9
    return c, lambda: c.cache_finished_req(req), (req,)


@case("ownership", "cache_unfinished_req: cache_protected_len claims the request's own slots")
def _(tmp):
    c = device_cache()
    req = request(c, [50, 51, 52])
    req.cache_protected_len = 2
    return c, lambda: c.cache_unfinished_req(req), (req,)


@case("ownership", "release_host on a node of another cache")
def _(tmp):
    c, other = tiered_cache(), tiered_cache()
    node = node_at(other, [7, 8, 9])
    other.protect_host(node)
    return c, lambda: c.release_host(node), ()


@case("ownership", "protect_host on a node of another cache")
def _(tmp):
    c, other = tiered_cache(), tiered_cache()
    return c, lambda: c.protect_host(node_at(other, [7, 8, 9])), ()


@case("ownership", "init_load_back of a node of another cache")
def _(tmp):
    c, other = tiered_cache(), tiered_cache()
    return c, lambda: c.init_load_back(node_at(other, [7, 8, 9])), ()


@case("ownership", "release_host of the pin a storage backup in flight holds")
def _(tmp):
    c = tiered_cache(manual_acks=True, storage=True)
    put(c, [20, 21])
    put(c, [20, 21])
    for ack in c.cache_controller.in_flight():
        c.cache_controller.complete(ack)
    c.writing_check()  # the write is acked; its storage backup is in flight and pins the node
    node = node_at(c, [20, 21])
    assert node.host_ref_counter == 1
    return c, lambda: c.release_host(node), ()


# -- atomicity -------------------------------------------------------------------------------------------
@case("atomicity", "serve: a token id of 2**63")
def _(tmp):
    c = device_cache()
    return c, lambda: hm.serve(c, [1, 2, 3, 4, 2**63]), ()


@case("atomicity", "serve (tiered): a token id of 2**63 after a host hit")
def _(tmp):
    c = tiered_cache()
    return c, lambda: hm.serve(c, [7, 8, 9, 2**63]), ()


@case("atomicity", "init_load_back: mem_quota is a string")
def _(tmp):
    c = tiered_cache()
    node = c.match_prefix([7, 8, 9]).best_match_node
    return c, lambda: c.init_load_back(node, mem_quota="10"), ()


@case("atomicity", "init_load_back: req is not a Request")
def _(tmp):
    c = tiered_cache()
    node = c.match_prefix([7, 8, 9]).best_match_node
    return c, lambda: c.init_load_back(node, req={"rid": 1}), ()


@case("atomicity", "init_load_back: req.mamba_pool_idx names two slots")
def _(tmp):
    c = tiered_cache()
    node = c.match_prefix([7, 8, 9]).best_match_node
    req = hm.Request([7, 8, 9], torch.empty(0, dtype=torch.int64), c.mamba_pool.alloc(2))
    return c, lambda: c.init_load_back(node, req=req), (req,)


@case("atomicity", "cache_unfinished_req: mamba_pool_idx names two slots")
def _(tmp):
    c = device_cache()
    req = request(c, [50, 51])
    extra = c.mamba_pool.alloc(1)
    req.mamba_pool_idx = torch.cat((req.mamba_pool_idx, extra))
    return c, lambda: c.cache_unfinished_req(req), (req,)


@case("atomicity", "cache_finished_req: mamba_pool_idx is a list")
def _(tmp):
    c = device_cache()
    req = request(c, [50, 51])
    req.mamba_pool_idx = req.mamba_pool_idx.tolist()
    return c, lambda: c.cache_finished_req(req), (req,)


@case("atomicity", "write_backup: write_back='yes'")
def _(tmp):
    c = tiered_cache()
    put(c, [30, 31])
    return c, lambda: c.write_backup(node_at(c, [30, 31]), write_back="yes"), ()


# -- data loss -------------------------------------------------------------------------------------------
def _loading(tmp):
    c = tiered_cache(manual_acks=True)
    node = c.match_prefix([7, 8, 9]).best_match_node
    loaded, _ = c.init_load_back(node)
    assert len(loaded) == 3 and node.id in c.ongoing_load_back
    return c, node


@case("data loss", "dec_lock_ref of the lock an in-flight load holds")
def _(tmp):
    c, node = _loading(tmp)
    return c, lambda: c.dec_lock_ref(node), ()


@case("data loss", "dec_lock_ref of the lock an in-flight load holds, started")
def _(tmp):
    c, node = _loading(tmp)
    c.ready_to_load_host_cache()
    return c, lambda: c.dec_lock_ref(node), ()


@case("data loss", "dec_lock_ref of the lock a write-through in flight holds")
def _(tmp):
    c = tiered_cache(manual_acks=True)
    put(c, [30, 31])
    put(c, [30, 31])
    node = node_at(c, [30, 31])
    assert node.id in c._locked_writes
    return c, lambda: c.dec_lock_ref(node), ()


# -- silent ----------------------------------------------------------------------------------------------
for _tokens in ([-1], [1, 2, -5], [2**63], [1, 2**64]):
    @case("silent", f"match_prefix({_tokens})")
    def _(tmp, tokens=_tokens):
        c = device_cache()
        return c, lambda: c.match_prefix(tokens), ()

    @case("silent", f"insert({_tokens}, ...)")
    def _(tmp, tokens=_tokens):
        c = device_cache()
        kv, slot = c.kv_pool.alloc(len(tokens)), alloc_state(c, [])
        return c, lambda: c.insert(tokens, kv, slot), ()


@case("silent", "serve: a negative token id")
def _(tmp):
    c = tiered_cache()
    return c, lambda: hm.serve(c, [7, 8, -9]), ()


@case("silent", "protect_host on a node without a host copy")
def _(tmp):
    c = tiered_cache()
    put(c, [30, 31])
    return c, lambda: c.protect_host(node_at(c, [30, 31])), ()


@case("silent", "protect_host on the root")
def _(tmp):
    c = tiered_cache()
    return c, lambda: c.protect_host(c.root_node), ()


@case("silent", "protect_host(mamba=True) on a node without a host state")
def _(tmp):
    c = tiered_cache()
    put(c, [40, 41, 42, 43])
    put(c, [40, 41, 42, 43])  # backed up
    c.match_prefix([40, 41])  # splits it: the upper half has host KV and no state
    node = node_at(c, [40, 41])
    assert node.host_value is not None and node.mamba_host_value is None
    return c, lambda: c.protect_host(node, mamba=True), ()


for _name in ("evict", "evict_mamba"):
    @case("silent", f"{_name}(True)")
    def _(tmp, name=_name):
        c = device_cache()
        return c, lambda: getattr(c, name)(True), ()

for _name in ("evict_host", "evict_mamba_host"):
    @case("silent", f"{_name}(True)")
    def _(tmp, name=_name):
        c = tiered_cache()
        return c, lambda: getattr(c, name)(True), ()

for _quota in (float("nan"), -1, -0.5):
    @case("silent", f"init_load_back(mem_quota={_quota})")
    def _(tmp, quota=_quota):
        c = tiered_cache()
        node = c.match_prefix([7, 8, 9]).best_match_node
        return c, lambda: c.init_load_back(node, mem_quota=quota), ()


@case("silent", "load_back of the root")
def _(tmp):
    c = tiered_cache()
    return c, lambda: c.load_back(c.root_node), ()


@case("silent", "load_back of a node already on device")
def _(tmp):
    c = tiered_cache()
    put(c, [30, 31])
    return c, lambda: c.load_back(node_at(c, [30, 31])), ()


for _fill in (-1, 5):
    @case("silent", f"cache_unfinished_req: fill_len={_fill}")
    def _(tmp, fill=_fill):
        c = device_cache()
        req = request(c, [50, 51, 52])
        req.fill_len = fill
        return c, lambda: c.cache_unfinished_req(req), (req,)


@case("silent", "write_backup(node, write_back=1)")
def _(tmp):
    c = tiered_cache()
    put(c, [30, 31])
    return c, lambda: c.write_backup(node_at(c, [30, 31]), write_back=1), ()


def _config_case(klass: str, name: str, **fields):
    @case(klass, f"CacheConfig({name})")
    def _(tmp):
        return None, lambda: hm.MambaRadixCache(hm.CacheConfig(**{"device": "cpu", **fields})), ()


for _field in ("device_kv_tokens", "host_kv_tokens", "device_mamba_slots", "host_mamba_slots", "page_size"):
    _config_case("silent", f"{_field}=True", **{_field: True})
_config_case("silent", "device='cpu:3'", device="cpu:3")
_config_case("silent", "load_back_threshold=-1", load_back_threshold=-1)
_config_case("silent", "enable_storage='no'", enable_storage="no")
_config_case("silent", "mamba_cache_chunk_size=True", mamba_cache_chunk_size=True)


@case("silent", "HiMambaRadixCache(manual_acks='no')")
def _(tmp):
    return None, lambda: hm.HiMambaRadixCache(hm.CacheConfig(device="cpu"), manual_acks="no"), ()


@case("silent", "a script with manual_acks 'no'")
def _(tmp):
    from himamba.sim.fuzz import check_script

    script = {"cache": "tiered", "config": {}, "manual_acks": "no", "ops": []}
    return None, lambda: check_script(script), ()


@case("silent", "a trace line with a token id of 2**63")
def _(tmp):
    from himamba.sim.trace_io import load_jsonl

    path = tmp / "t.jsonl"
    path.write_text(json.dumps({"prompt_len": 1, "tokens": [1, 2**63]}) + "\n")
    return None, lambda: load_jsonl(path), ()


@case("silent", "bench replay --repeat -5")
def _(tmp):
    from himamba.sim.bench_replay import _check, _parser

    path = tmp / "t.jsonl"
    path.write_text('{"prompt_len": 1, "tokens": [1, 2]}\n')
    return None, lambda: _check(_parser().parse_args(["--trace", str(path), "--repeat", "-5"])), ()


# -- unclear ---------------------------------------------------------------------------------------------
for _arg in (None, "3", 2.5, [3]):
    @case("unclear", f"evict({_arg!r})")
    def _(tmp, arg=_arg):
        c = device_cache()
        return c, lambda: c.evict(arg), ()

    @case("unclear", f"kv_pool.alloc({_arg!r})")
    def _(tmp, arg=_arg):
        c = device_cache()
        return c, lambda: c.kv_pool.alloc(arg), ()

for _req in (None, "req", 42):
    @case("unclear", f"cache_finished_req({_req!r})")
    def _(tmp, req=_req):
        c = device_cache()
        return c, lambda: c.cache_finished_req(req), ()

    @case("unclear", f"cache_unfinished_req({_req!r})")
    def _(tmp, req=_req):
        c = device_cache()
        return c, lambda: c.cache_unfinished_req(req), ()

for _key in (None, 5, "abc", [1.5]):
    @case("unclear", f"match_prefix({_key!r})")
    def _(tmp, key=_key):
        c = device_cache()
        return c, lambda: c.match_prefix(key), ()

for _node in (None, "node", 3):
    for _method in ("inc_lock_ref", "dec_lock_ref"):
        @case("unclear", f"{_method}({_node!r})")
        def _(tmp, node=_node, method=_method):
            c = device_cache()
            return c, lambda: getattr(c, method)(node), ()
    for _method in ("protect_host", "release_host", "init_load_back", "load_back", "write_backup"):
        @case("unclear", f"{_method}({_node!r})")
        def _(tmp, node=_node, method=_method):
            c = tiered_cache()
            return c, lambda: getattr(c, method)(node), ()


@case("unclear", "insert(key, value=None, ...)")
def _(tmp):
    c = device_cache()
    slot = alloc_state(c, [40])
    return c, lambda: c.insert([40], None, slot), ()


@case("unclear", "cache_finished_req: kv_indices is a list")
def _(tmp):
    c = device_cache()
    req = request(c, [50, 51])
    req.kv_indices = req.kv_indices.tolist()
    return c, lambda: c.cache_finished_req(req), (req,)


@case("unclear", "cache_finished_req: token_ids is None")
def _(tmp):
    c = device_cache()
    req = request(c, [50, 51])
    req.token_ids = None
    return c, lambda: c.cache_finished_req(req), (req,)


@case("unclear", "serve(not a cache, tokens)")
def _(tmp):
    return None, lambda: hm.serve(object(), [1, 2]), ()


_config_case("unclear", "device_kv_tokens=2**62", device_kv_tokens=2**62)
_config_case("unclear", "device_kv_tokens=None", device_kv_tokens=None)
_config_case("unclear", "device_mamba_slots='8'", device_mamba_slots="8")
_config_case("unclear", "load_back_threshold=None", load_back_threshold=None)


@case("unclear", "CacheConfig(host_kv_tokens=2**50) for the tiered cache")
def _(tmp):
    return None, lambda: hm.HiMambaRadixCache(hm.CacheConfig(device="cpu", host_kv_tokens=2**50)), ()


@case("unclear", "a pickle renamed .jsonl")
def _(tmp):
    from himamba.sim.trace_io import load_jsonl

    path = tmp / "trace.jsonl"
    path.write_bytes(pickle.dumps({"prompt_len": 1, "tokens": [1, 2, 3] * 100}))
    return None, lambda: load_jsonl(path), ()


@case("unclear", "a script op missing a field")
def _(tmp):
    from himamba.sim.fuzz import check_script

    script = {"cache": "tiered", "config": {}, "ops": [{"op": "request"}]}
    return None, lambda: check_script(script), ()


@case("unclear", "a script op with a float count")
def _(tmp):
    from himamba.sim.fuzz import check_script

    script = {"cache": "tiered", "config": {}, "ops": [{"op": "evict", "n": 1.5}]}
    return None, lambda: check_script(script), ()


@case("unclear", "bench replay --limit 0")
def _(tmp):
    from himamba.sim.bench_replay import _check, _parser

    path = tmp / "t.jsonl"
    path.write_text('{"prompt_len": 1, "tokens": [1, 2]}\n')
    return None, lambda: _check(_parser().parse_args(["--trace", str(path), "--limit", "0"])), ()


@case("unclear", "prefetch_from_storage with a negative token")
def _(tmp):
    c = tiered_cache(storage=True)
    return c, lambda: c.prefetch_from_storage("r", c.root_node, [1, -2]), ()


# -- hangs -----------------------------------------------------------------------------------------------
@case("hangs", "SimRequest.make([1, 2], 10**12)")
def _(tmp):
    from himamba.sim.request import SimRequest

    return None, lambda: SimRequest.make([1, 2], 10**12), ()


@case("hangs", "a trace line with output_len 10**12")
def _(tmp):
    from himamba.sim.trace_io import load_jsonl

    path = tmp / "t.jsonl"
    path.write_text(json.dumps({"prompt": [1, 2], "output_len": 10**12}) + "\n")
    return None, lambda: load_jsonl(path), ()


# -- output folders --------------------------------------------------------------------------------------
def _cli(*argv: str, names: tuple[str, ...] = ()):
    """Run the command line in this process. Status 2 with one line ``himamba: error: ...``
    holding every string of ``names`` becomes an InvalidInputError; an exception escaping it is
    a :class:`Crash`; status 2 with another message is an :class:`UnclearEnd`."""
    import contextlib
    import io

    from himamba.cli import main

    def call():
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                code = main(list(argv))
        except (Exception, KeyboardInterrupt) as exc:  # what escapes the command would end in a traceback
            raise Crash(f"himamba {' '.join(argv)} ended in a traceback: {type(exc).__name__}: {exc}") from exc
        lines = err.getvalue().strip().splitlines()
        if code == 2:
            if len(lines) != 1 or not lines[0].startswith("himamba: error: ") or not all(n in lines[0] for n in names):
                raise UnclearEnd(f"status 2 without one line naming {list(names)}: {err.getvalue()[:300]!r}")
            raise hm.InvalidInputError(f"himamba {' '.join(argv)} refused with status 2: {lines[0]}")
        return code
    return call


def _cli_interrupted(tmp: Path, *argv: str):
    """Run ``himamba ARGV`` in a process group of its own, send the group SIGINT (as Ctrl-C in a
    terminal does) once the command has started working, and expect status 130, a partial
    report on stdout and no traceback from it or its workers."""
    import os
    import signal
    import subprocess
    import sys
    import time

    def call():
        err_path = tmp / "stderr.txt"
        with open(err_path, "w") as err:
            here = str(Path(hm.__file__).resolve().parents[1])  # the code this process measures
            env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (here, os.environ.get("PYTHONPATH"))))}
            proc = subprocess.Popen([sys.executable, "-c", "from himamba.cli import main; raise SystemExit(main())",
                                     *argv], stdout=subprocess.PIPE, stderr=err, text=True, start_new_session=True,
                                    cwd=tmp, env=env)
            try:
                deadline = time.monotonic() + 60
                while err_path.stat().st_size == 0 and proc.poll() is None and time.monotonic() < deadline:
                    time.sleep(0.05)  # the progress bar's first line: the command is running
                time.sleep(1.0)
                os.killpg(proc.pid, signal.SIGINT)
                out, _ = proc.communicate(timeout=60)
            finally:
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
        text = err_path.read_text()
        if "Traceback" in text:
            raise Crash(f"a traceback after Ctrl-C (status {proc.returncode}): {text[-300:]!r}")
        if proc.returncode != 130 or "operations in" not in out or "interrupted" not in out:
            raise UnclearEnd(f"after Ctrl-C: status {proc.returncode}, stdout {out[-200:]!r}")
        raise hm.InvalidInputError("Ctrl-C ended the run with status 130 and a partial report")
    return call


def _victim(tmp: Path) -> tuple[Path, Callable[[], None]]:
    """A file outside the output folder, and a check that it is untouched."""
    victim = tmp / "victim.txt"
    victim.write_text("keep me")

    def untouched():
        if victim.read_text() != "keep me":
            raise Insecure("a file outside the output folder was overwritten")
    return victim, untouched


@case("output folders", "demo OUT: OUT holds a file")
def _(tmp):
    out = tmp / "out"
    out.mkdir()
    (out / "index.html").write_text("mine")

    def after():
        assert (out / "index.html").read_text() == "mine"
    return None, _cli("demo", str(out)), (), after


@case("output folders", "demo OUT: a link planted as OUT/index.html")
def _(tmp):
    victim, untouched = _victim(tmp)
    out = tmp / "out"
    out.mkdir()
    (out / "index.html").symlink_to(victim)
    return None, _cli("demo", str(out)), (), untouched


@case("output folders", "demo OUT: OUT is a link to another folder")
def _(tmp):
    elsewhere = tmp / "elsewhere"
    elsewhere.mkdir()
    (tmp / "out").symlink_to(elsewhere)

    def after():
        assert not any(elsewhere.iterdir())
    return None, _cli("demo", str(tmp / "out")), (), after


@case("output folders", "replay --svg DIR: DIR holds a file")
def _(tmp):
    script = tmp / "s.json"
    script.write_text(json.dumps({"cache": "device", "config": {"device": "cpu"}, "ops": [{"op": "request", "tokens": [1, 2]}]}))
    out = tmp / "svg"
    out.mkdir()
    (out / "step_000.svg").write_text("mine")

    def after():
        assert (out / "step_000.svg").read_text() == "mine"
    return None, _cli("replay", str(script), "--svg", str(out)), (), after


@case("output folders", "replay --svg DIR: DIR is a link")
def _(tmp):
    script = tmp / "s.json"
    script.write_text(json.dumps({"cache": "device", "config": {"device": "cpu"}, "ops": [{"op": "request", "tokens": [1, 2]}]}))
    elsewhere = tmp / "elsewhere"
    elsewhere.mkdir()
    (tmp / "svg").symlink_to(elsewhere)

    def after():
        assert not any(elsewhere.iterdir())
    return None, _cli("replay", str(script), "--svg", str(tmp / "svg")), (), after


@case("output folders", "fuzz --out FILE: FILE exists")
def _(tmp):
    out = tmp / "script.json"
    out.write_text("mine")

    def after():
        assert out.read_text() == "mine"
    return None, _cli("fuzz", "--legacy", "B3", "--ops", "50", "--no-progress", "--out", str(out)), (), after


@case("output folders", "fuzz --out FILE: FILE is a link")
def _(tmp):
    victim, untouched = _victim(tmp)
    (tmp / "script.json").symlink_to(victim)
    return None, _cli("fuzz", "--ops", "50", "--no-progress", "--out", str(tmp / "script.json")), (), untouched


# -- the engine, the model, the pools, storage -----------------------------------------------------------
@case("unclear", "Engine(not a cache)")
def _(tmp):
    return None, lambda: hm.Engine("cache"), ()


@case("unclear", "Engine.submit(a list of token lists)")
def _(tmp):
    c = device_cache()
    engine = hm.Engine(c, probe=False)
    return c, lambda: engine.submit([[1, 2, 3]]), ()


@case("silent", "Engine.run(max_steps=-1)")
def _(tmp):
    from himamba.sim.request import SimRequest

    c = device_cache()
    engine = hm.Engine(c, probe=False)
    return c, lambda: engine.run([SimRequest.make([1, 2], 2)], max_steps=-1), ()


for _value in ("2", True, 2.0):
    @case("unclear", f"ModelSpec(kv_heads={_value!r})")
    def _(tmp, value=_value):
        return None, lambda: hm.ModelSpec("m", 2, value, 4, 2, 4, 4, (2, 2)), ()

for _capacity in (-8, "4", 2.0):
    @case("unclear", f"KVPool(capacity={_capacity!r})")
    def _(tmp, capacity=_capacity):
        from himamba.memory.pools import KVPool

        return None, lambda: KVPool(hm.ModelSpec.tiny(), capacity), ()

    @case("unclear", f"MambaPool(capacity={_capacity!r})")
    def _(tmp, capacity=_capacity):
        from himamba.memory.pools import MambaPool

        return None, lambda: MambaPool(hm.ModelSpec.tiny(), capacity), ()


@case("silent", "storage.store_prefix with a negative token")
def _(tmp):
    c = tiered_cache(storage=True)
    return c, lambda: c.storage.store_prefix([1, 2, -3]), ()


@case("unclear", "write_backup_storage('node')")
def _(tmp):
    c = tiered_cache(storage=True)
    return c, lambda: c.write_backup_storage("node"), ()


# -- command line: hostile files and Ctrl-C ------------------------------------------------------------------
def _deep(depth: int = 100_000) -> str:
    return "[" * depth + "]" * depth


_LONG_INT = "7" * 5000  # past Python's 4300-digit limit for reading an int


def _trace_file(tmp: Path, lines: list[str], name: str = "t.jsonl") -> Path:
    path = tmp / name
    path.write_text("\n".join(lines) + "\n")
    return path


_GOOD = '{"prompt_len": 2, "tokens": [1, 2, 3]}'
_MOONCAKE = '{"timestamp": 0, "input_length": 600, "output_length": 5, "hash_ids": [1, 2]}'


@case("command line", "bench replay: a request longer than --device-tokens")
def _(tmp):
    path = _trace_file(tmp, [_GOOD, "", json.dumps({"prompt_len": 1, "tokens": list(range(9))})])
    return None, _cli("bench", "replay", "--trace", str(path), "--repeat", "1", "--device-tokens", "8",
                      names=("t.jsonl:3", "--device-tokens")), ()


@case("command line", "bench replay --format mooncake: a request longer than --device-blocks")
def _(tmp):
    path = _trace_file(tmp, [_MOONCAKE, '{"timestamp": 1, "input_length": 2000, "output_length": 5, '
                                        '"hash_ids": [1, 2, 3, 4]}'])
    return None, _cli("bench", "replay", "--trace", str(path), "--format", "mooncake", "--device-blocks", "3",
                      "--repeat", "1", names=("t.jsonl:2", "--device-blocks")), ()


@case("command line", "bench replay --tiered --state-slots 1: a hit needs a second state slot")
def _(tmp):
    path = _trace_file(tmp, [_MOONCAKE, '{"timestamp": 1, "input_length": 2000, "output_length": 5, '
                                        '"hash_ids": [1, 2, 3, 4]}'])
    return None, _cli("bench", "replay", "--trace", str(path), "--format", "mooncake", "--device-blocks", "4",
                      "--state-slots", "1", "--tiered", "--host-blocks", "1", "--repeat", "1",
                      names=("--state-slots",)), ()


@case("command line", "bench replay: a deeply nested JSON line")
def _(tmp):
    path = _trace_file(tmp, [_GOOD, _deep()])
    return None, _cli("bench", "replay", "--trace", str(path), "--repeat", "1", names=("t.jsonl:2",)), ()


@case("command line", "trace stats: a deeply nested JSON line")
def _(tmp):
    path = _trace_file(tmp, [_MOONCAKE, _deep()])
    return None, _cli("trace", "stats", str(path), names=("t.jsonl:2",)), ()


@case("command line", "replay: a deeply nested JSON script")
def _(tmp):
    path = tmp / "s.json"
    path.write_text(_deep())
    return None, _cli("replay", str(path), names=("s.json",)), ()


@case("command line", "bench replay: an integer of 5000 digits in a trace")
def _(tmp):
    path = _trace_file(tmp, [_GOOD, _GOOD, f'{{"prompt_len": 1, "tokens": [1, {_LONG_INT}]}}'])
    return None, _cli("bench", "replay", "--trace", str(path), "--repeat", "1", names=("t.jsonl:3",)), ()


@case("command line", "trace stats: an integer of 5000 digits in a Mooncake trace")
def _(tmp):
    path = _trace_file(tmp, [_MOONCAKE, f'{{"timestamp": {_LONG_INT}, "input_length": 1, "output_length": 1, '
                                        '"hash_ids": [1]}'])
    return None, _cli("trace", "stats", str(path), names=("t.jsonl:2",)), ()


@case("command line", "replay: an integer of 5000 digits in a script")
def _(tmp):
    path = tmp / "s.json"
    path.write_text('{"cache": "device",\n "config": {},\n "ops": [{"op": "evict", "n": ' + _LONG_INT + "}]}")
    return None, _cli("replay", str(path), names=("s.json:3",)), ()


@case("command line", "replay: a pickle named .json")
def _(tmp):
    path = tmp / "script.json"
    path.write_bytes(pickle.dumps({"cache": "device", "config": {}, "ops": []}))
    return None, _cli("replay", str(path), names=("script.json",)), ()


@case("command line", "bench replay: a pickle named .jsonl")
def _(tmp):
    path = tmp / "trace.jsonl"
    path.write_bytes(pickle.dumps([{"prompt_len": 1, "tokens": [1, 2]}]))
    return None, _cli("bench", "replay", "--trace", str(path), "--repeat", "1", names=("trace.jsonl",)), ()


@case("command line", "replay: a script whose legacy list holds lists")
def _(tmp):
    path = tmp / "s.json"
    path.write_text(json.dumps({"cache": "device", "config": {"legacy": [["B1"]]}, "ops": []}))
    return None, _cli("replay", str(path), names=("legacy",)), ()


@case("command line", "replay: a script op whose name is a list")
def _(tmp):
    path = tmp / "s.json"
    path.write_text(json.dumps({"cache": "device", "config": {}, "ops": [{"op": ["evict"], "n": 1}]}))
    return None, _cli("replay", str(path), names=("op 0",)), ()


@case("command line", "fuzz: Ctrl-C")
def _(tmp):
    return None, _cli_interrupted(tmp, "fuzz", "--ops", "100000000"), ()


@case("command line", "fuzz --jobs 2: Ctrl-C reaches the workers too")
def _(tmp):
    return None, _cli_interrupted(tmp, "fuzz", "--ops", "100000000", "--jobs", "2"), ()


# -- output rule: himamba differential --out ---------------------------------------------------------------
_DIFF = ("differential", "--seqs", "1", "--ops", "5", "--no-progress", "--no-shrink")


@case("output folders", "differential --out FILE: FILE is a link")
def _(tmp):
    victim, untouched = _victim(tmp)
    (tmp / "div.json").symlink_to(victim)
    return None, _cli(*_DIFF, "--out", str(tmp / "div.json")), (), untouched


@case("output folders", "differential --out FILE: FILE exists")
def _(tmp):
    out = tmp / "div.json"
    out.write_text("mine")

    def after():
        assert out.read_text() == "mine"
    return None, _cli(*_DIFF, "--out", str(out)), (), after


@case("output folders", "differential --out FILE: FILE is a folder")
def _(tmp):
    (tmp / "div.json").mkdir()
    (tmp / "div.json" / "x").write_text("mine")

    def after():
        assert (tmp / "div.json" / "x").read_text() == "mine"
    return None, _cli(*_DIFF, "--out", str(tmp / "div.json")), (), after


# -- small holes: foreign acks, extra keys, the tree's slots ------------------------------------------------
def _in_flight_write(c) -> None:
    put(c, [20, 21])
    put(c, [20, 21])  # the second hit writes it through: an ack in flight
    assert c.cache_controller.in_flight()


@case("small holes", "cache_controller.complete(999)")
def _(tmp):
    c = tiered_cache(manual_acks=True)
    _in_flight_write(c)
    return c, lambda: c.cache_controller.complete(999), ()


@case("small holes", "cache_controller.complete(an ack of another cache)")
def _(tmp):
    c, other = tiered_cache(manual_acks=True), tiered_cache(manual_acks=True)
    _in_flight_write(other)
    ack = other.cache_controller.in_flight()[0]

    def after():
        assert not ack.manual_done, "the other cache's write was completed"
    return c, lambda: c.cache_controller.complete(ack), (), after


@case("small holes", "storage.complete(42)")
def _(tmp):
    c = tiered_cache(storage=True)
    return c, lambda: c.storage.complete(42), ()


@case("small holes", "serve with extra_key=nan (unmatchable)")
def _(tmp):
    c = device_cache()
    return c, lambda: hm.serve(c, hm.RadixKey([40, 41], extra_key=float("nan"))), ()


@case("small holes", "serve with extra_key=True after extra_key=1 (shared entries)")
def _(tmp):
    c = device_cache()
    hm.serve(c, hm.RadixKey([40, 41], extra_key=1))
    return c, lambda: hm.serve(c, hm.RadixKey([40, 41, 42], extra_key=True)), ()


@case("small holes", "serve with extra_key=numpy.bool_(True) after extra_key=1 (shared entries)")
def _(tmp):
    import numpy as np

    c = device_cache()
    hm.serve(c, hm.RadixKey([40, 41], extra_key=1))
    return c, lambda: hm.serve(c, hm.RadixKey([40, 41, 42], extra_key=np.bool_(True))), ()


for _extra in ([1], {"lora": 1}, {1}, bytearray(b"x")):
    @case("small holes", f"match_prefix with extra_key={_extra!r}")
    def _(tmp, extra=_extra):
        c = device_cache()
        return c, lambda: c.match_prefix(hm.RadixKey([1, 2], extra_key=extra)), ()


@case("small holes", "cache_finished_req with extra_key=['lora']")
def _(tmp):
    c = device_cache()
    req = request(c, [50, 51])
    req.extra_key = ["lora"]
    return c, lambda: c.cache_finished_req(req), (req,)


for _ps in (1, 4):
    @case("small holes", f"kv_pool.free of a tree node's slots (page size {_ps})")
    def _(tmp, ps=_ps):
        c = device_cache(ps)
        return c, lambda: c.kv_pool.free(_owned_kv(c, [t for t in (9, 9, 9) for _ in range(ps)])), ()


@case("small holes", "mamba_pool.free of a tree node's state slot")
def _(tmp):
    c = device_cache()
    return c, lambda: c.mamba_pool.free(node_at(c, [9, 9, 9]).mamba_value), ()


@case("small holes", "kv_pool.free of a caller's slots and one of the tree's")
def _(tmp):
    c = device_cache()
    mine = c.kv_pool.alloc(2)
    return c, lambda: c.kv_pool.free(torch.cat((mine, _owned_kv(c, [9, 9, 9])[:1]))), ()


# -- faults, listeners, threads, HTML, recordings ----------------------------------------------------------
from fault_cases import register as _register_fault_cases  # noqa: E402 - the cases above come first

_register_fault_cases(case)
