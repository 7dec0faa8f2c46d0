"""check_integrity: prove that every KV row and state the tree owns holds its deterministic bytes.

Content is defined in :mod:`himamba.memory.content`: KV rows depend on (token, position, layer),
a state on the whole prefix it ends. Both are recomputed from the tree's own keys, so this check
needs no outside record: any slot mixed up, overwritten or lost across a split, an eviction or a
tier move shows up as a violation. It is only meaningful when whoever filled the slots used
:func:`~himamba.memory.content.write_kv` / :func:`~himamba.memory.content.write_state`.

Slots that a queued (not yet started) load will fill, and host copies whose bytes still sit in a
staging buffer (CUDA writes before their ack), are skipped: their bytes are not there yet.
"""

from __future__ import annotations

import torch

from himamba.cache.invariants import Violation
from himamba.memory.content import kv_content_at, prefix_fingerprint, state_content_many


def check_integrity(cache) -> list[Violation]:
    """Every tree-owned KV row and state slot whose bytes differ from their content; [] if none."""
    spec = cache.kv_pool.spec
    controller = getattr(cache, "cache_controller", None)
    pending_kv: set[int] = set()
    pending_states: set[int] = set()
    unlanded: set[int] = set()
    tiers = {"device": ("value", "mamba_value", cache.kv_pool, cache.mamba_pool)}
    if controller is not None:
        tiers["host"] = ("host_value", "mamba_host_value", cache.host_kv_pool, cache.host_mamba_pool)
        pending_kv, pending_states = controller.pending_device_slots()
        unlanded = controller.unlanded_write_node_ids()
    if cache.device.type == "cuda":
        torch.cuda.synchronize(cache.device)
    # Collect (node, slots, tokens, start position, fingerprint) per tier in one walk.
    kv_rows = {t: [] for t in tiers}
    states = {t: [] for t in tiers}
    stack = [(child, 0, 0) for child in cache.root_node.children.values()]
    while stack:
        node, start, parent_fp = stack.pop()
        tokens = node.key.token_ids
        fp = prefix_fingerprint(tokens, parent_fp)
        for tier, (kv_attr, state_attr, _, _) in tiers.items():
            if tier == "host" and node.id in unlanded:
                continue
            idx = getattr(node, kv_attr)
            if idx is not None and not (tier == "device" and pending_kv and not pending_kv.isdisjoint(idx.tolist())):
                kv_rows[tier].append((node, idx, tokens, start))
            slot = getattr(node, state_attr)
            if slot is not None and not (tier == "device" and int(slot) in pending_states):
                states[tier].append((node, slot, fp))
        stack.extend((c, start + len(tokens), fp) for c in node.children.values())
    out: list[Violation] = []
    for tier, (_, _, kv_pool, state_pool) in tiers.items():
        _compare_kv(out, tier, kv_pool, kv_rows[tier], spec)
        _compare_states(out, tier, state_pool, states[tier], spec)
    return out


def _compare_kv(out: list[Violation], tier: str, pool, rows: list, spec) -> None:
    if not rows:
        return
    dev = pool.device
    idx = torch.cat([r[1] for r in rows]).to(dev)
    tok = torch.tensor([t for r in rows for t in r[2]], dtype=torch.int64, device=dev)
    pos = torch.tensor([r[3] + i for r in rows for i in range(len(r[2]))], dtype=torch.int64, device=dev)
    k, v = kv_content_at(spec, tok, pos)
    bad = ((pool.k_buffer[:, idx] != k) | (pool.v_buffer[:, idx] != v)).flatten(2).any(dim=2).any(dim=0)
    if not bool(bad.any()):
        return
    offset = 0
    for node, slots, tokens, start in rows:
        n = len(slots)
        if bool(bad[offset : offset + n].any()):
            out.append(Violation("INTEGRITY", node.id, f"{tier} KV rows differ from tokens {start}..{start + len(tokens) - 1}"))
        offset += n


def _compare_states(out: list[Violation], tier: str, pool, rows: list, spec) -> None:
    if not rows:
        return
    dev = pool.device
    slots = torch.cat([r[1].view(1) for r in rows]).to(dev)
    conv, ssm = state_content_many(spec, [r[2] for r in rows], dev)
    bad = (pool.conv[:, slots] != conv).flatten(2).any(dim=2).any(dim=0) | \
        (pool.ssm[:, slots] != ssm).flatten(2).any(dim=2).any(dim=0)
    for i in torch.nonzero(bad).flatten().tolist():
        out.append(Violation("INTEGRITY", rows[i][0].id, f"{tier} state differs from the state of its prefix"))
