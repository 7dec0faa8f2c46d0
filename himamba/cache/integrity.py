"""check_integrity: prove that every KV row and state the tree owns holds its deterministic bytes.

Content is defined in :mod:`himamba.memory.content`: KV rows depend on (token, position, layer),
a state on the whole prefix it ends. Both are recomputed from the tree's own keys, so this check
needs no outside record: any slot mixed up, overwritten or lost across a split, an eviction or a
tier move shows up as a violation. It is only meaningful when whoever filled the slots used
:func:`~himamba.memory.content.write_kv` / :func:`~himamba.memory.content.write_state`.

Slots a transfer still owes bytes to are skipped, slot by slot (not node by node): device slots of
a queued or unlanded load, host rows and host states of an unlanded write. After a split, the
upper node's rows of a write in flight are skipped as exactly as the lower node's. Every other
slot is compared, whatever engine moved it. A transfer in flight whose source or destination slot
was freed before it landed (so the slot could be handed out again) is reported too.
"""

from __future__ import annotations

import torch

from himamba.cache.checks import Violation
from himamba.memory.content import kv_content_at, prefix_fingerprint, state_content_many


def check_integrity(cache) -> list[Violation]:
    """Every tree-owned KV row and state slot whose bytes differ from their content; [] if none."""
    spec = cache.kv_pool.spec
    controller = getattr(cache, "cache_controller", None)
    tiers = {"device": ("value", "mamba_value", cache.kv_pool, cache.mamba_pool)}
    if cache.device.type == "cuda":
        torch.cuda.synchronize(cache.device)
    skip = {"device": (set(), set())}
    if controller is not None:
        tiers["host"] = ("host_value", "mamba_host_value", cache.host_kv_pool, cache.host_mamba_pool)
        unlanded = controller.unlanded_slots()
        skip = {"device": (unlanded.device_kv, unlanded.device_states), "host": (unlanded.host_kv, unlanded.host_states)}
    # Collect (node, slots, tokens, start position, fingerprint) per tier in one walk.
    kv_rows = {t: [] for t in tiers}
    states = {t: [] for t in tiers}
    stack = [(child, 0, 0) for child in cache.root_node.children.values()]
    while stack:
        node, start, parent_fp = stack.pop()
        tokens = node.key.token_ids
        fp = prefix_fingerprint(tokens, parent_fp)
        for tier, (kv_attr, state_attr, _, _) in tiers.items():
            idx = getattr(node, kv_attr)
            if idx is not None:
                kv_rows[tier].append((node, idx, tokens, start))
            slot = getattr(node, state_attr)
            if slot is not None and not (skip[tier][1] and int(slot) in skip[tier][1]):
                states[tier].append((node, slot, fp))
        stack.extend((c, start + len(tokens), fp) for c in node.children.values())
    out: list[Violation] = []
    if controller is not None:
        for ack, sentence in controller.freed_in_flight():
            out.append(Violation("INTEGRITY", ack.node_ids[0] if ack.node_ids else None, sentence))
    _compare_kv(out, [(tier, pools[2], kv_rows[tier], skip[tier][0]) for tier, pools in tiers.items()], spec)
    _compare_states(out, [(tier, pools[3], states[tier]) for tier, pools in tiers.items()], spec)
    return out


def _compare_kv(out: list[Violation], groups: list[tuple[str, object, list, set[int]]], spec) -> None:
    """Compare the KV rows of every tier (skipping the unlanded slots given per tier); their
    content is computed once for all tiers."""
    rows = [r for _, _, tier_rows, _ in groups for r in tier_rows]
    if not rows:
        return
    dev = groups[0][1].device
    tok = torch.tensor([t for r in rows for t in r[2]], dtype=torch.int64, device=dev)
    pos = torch.tensor([r[3] + i for r in rows for i in range(len(r[2]))], dtype=torch.int64, device=dev)
    k_all, v_all = kv_content_at(spec, tok, pos)
    offset = 0
    for tier, pool, tier_rows, unlanded in groups:
        if not tier_rows:
            continue
        idx = torch.cat([r[1] for r in tier_rows]).to(pool.device)
        n = idx.numel()
        k, v = k_all[:, offset : offset + n].to(pool.device), v_all[:, offset : offset + n].to(pool.device)
        offset += n
        have_k, have_v = pool.k_buffer[:, idx], pool.v_buffer[:, idx]
        if torch.equal(have_k, k) and torch.equal(have_v, v):
            continue
        bad = ((have_k != k) | (have_v != v)).flatten(2).any(dim=2).any(dim=0)
        if unlanded:
            owed = torch.zeros(pool.capacity, dtype=torch.bool, device=pool.device)
            owed[torch.tensor(sorted(unlanded), dtype=torch.int64, device=pool.device)] = True
            bad &= ~owed[idx]
        start = 0
        for node, slots, tokens, first in tier_rows:
            if bool(bad[start : start + len(slots)].any()):
                out.append(Violation("INTEGRITY", node.id, f"{tier} KV rows differ from tokens {first}..{first + len(tokens) - 1}"))
            start += len(slots)


def _compare_states(out: list[Violation], groups: list[tuple[str, object, list]], spec) -> None:
    """Compare the states of every tier; their content is computed once for all tiers."""
    rows = [r for _, _, tier_rows in groups for r in tier_rows]
    if not rows:
        return
    conv_all, ssm_all = state_content_many(spec, [r[2] for r in rows], groups[0][1].device)
    offset = 0
    for tier, pool, tier_rows in groups:
        if not tier_rows:
            continue
        n = len(tier_rows)
        slots = torch.cat([r[1].view(1) for r in tier_rows]).to(pool.device)
        conv = conv_all[:, offset : offset + n].to(pool.device)
        ssm = ssm_all[:, offset : offset + n].to(pool.device)
        offset += n
        have_conv, have_ssm = pool.conv[:, slots], pool.ssm[:, slots]
        if torch.equal(have_conv, conv) and torch.equal(have_ssm, ssm):
            continue
        bad = (have_conv != conv).flatten(2).any(dim=2).any(dim=0) | (have_ssm != ssm).flatten(2).any(dim=2).any(dim=0)
        for i in torch.nonzero(bad).flatten().tolist():
            out.append(Violation("INTEGRITY", tier_rows[i][0].id, f"{tier} state differs from the state of its prefix"))
