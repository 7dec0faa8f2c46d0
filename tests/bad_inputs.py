"""A catalogue of bad inputs, by class, each on a cache with some history (or on a file or a folder).

Every :class:`Case` builds what it needs and returns ``(cache, call, requests)``: ``call()`` must
raise a clear error (a :class:`ValueError` subclass of the project) and leave the cache (and the
requests) exactly as they were. Cases without a cache (configuration, readers, the command line)
return ``cache=None`` and check their own "nothing changed" (files untouched) in ``after``.

Classes (the issue's): ``ownership``, ``atomicity``, ``data loss``, ``silent``, ``unclear``,
``hangs``, ``output folders``. ``tests/test_bad_input_catalogue.py`` runs every case;
``bench/bad_input.py`` prints how many of each class get a clear error with nothing changed.
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
    build: Callable[[Path], tuple]  # tmp folder -> (cache | None, call, requests, after | None)


CASES: list[Case] = []


def case(klass: str, name: str):
    def register(build):
        CASES.append(Case(klass, name, build))
        return build
    return register


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
def _cli(*argv: str):
    """Run the command line; its status 2 (a clear error) becomes an InvalidInputError."""
    from himamba.cli import main

    def call():
        code = main(list(argv))
        if code == 2:
            raise hm.InvalidInputError(f"himamba {' '.join(argv)} refused with status 2")
        return code
    return call


def _victim(tmp: Path) -> tuple[Path, Callable[[], None]]:
    """A file outside the output folder, and a check that it is untouched."""
    victim = tmp / "victim.txt"
    victim.write_text("keep me")

    def untouched():
        assert victim.read_text() == "keep me", "a file outside the output folder was overwritten"
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
