"""check_integrity: prove that every KV row and state the tree owns holds its deterministic bytes.

Content is defined in :mod:`himamba.memory.content`: KV rows depend on (token, position, layer),
a state on the whole prefix it ends. Both are recomputed from the tree's own keys, so this check
needs no outside record: any slot mixed up, overwritten or lost across a split, an eviction or a
tier move shows up as a violation. It is only meaningful when whoever filled the slots used
:func:`~himamba.memory.content.write_kv` / :func:`~himamba.memory.content.write_state`.
"""

from __future__ import annotations

import torch

from himamba.cache.invariants import Violation
from himamba.memory.content import kv_content, prefix_fingerprint, state_content


def check_integrity(cache) -> list[Violation]:
    """Every tree-owned KV row and state slot whose bytes differ from their content; [] if none."""
    out: list[Violation] = []
    spec = cache.kv_pool.spec
    tiers = [("device", "value", "mamba_value", cache.kv_pool, cache.mamba_pool)]
    pending_kv: set[int] = set()
    pending_states: set[int] = set()
    unlanded: set[int] = set()
    controller = getattr(cache, "cache_controller", None)
    if controller is not None:
        tiers.append(("host", "host_value", "mamba_host_value", cache.host_kv_pool, cache.host_mamba_pool))
        pending_kv, pending_states = controller.pending_device_slots()
        unlanded = controller.unlanded_write_node_ids()
    if cache.device.type == "cuda":
        torch.cuda.synchronize(cache.device)
    stack = [(child, 0, 0) for child in cache.root_node.children.values()]
    while stack:
        node, start, parent_fp = stack.pop()
        tokens = node.key.token_ids
        fp = prefix_fingerprint(tokens, parent_fp)
        k = v = conv = ssm = None
        for tier, kv_attr, state_attr, kv_pool, state_pool in tiers:
            if tier == "host" and node.id in unlanded:
                continue  # bytes still in a staging buffer; they land when the ack is processed
            idx = getattr(node, kv_attr)
            if idx is not None and tier == "device" and pending_kv and not pending_kv.isdisjoint(idx.tolist()):
                idx = None  # a queued load will fill these rows
            if idx is not None:
                if k is None:
                    k, v = kv_content(spec, tokens, start, kv_pool.device)
                if not (torch.equal(kv_pool.k_buffer[:, idx], k.to(kv_pool.device))
                        and torch.equal(kv_pool.v_buffer[:, idx], v.to(kv_pool.device))):
                    out.append(Violation("INTEGRITY", node.id, f"{tier} KV rows differ from tokens {start}..{start + len(tokens) - 1}"))
            slot = getattr(node, state_attr)
            if slot is not None and tier == "device" and int(slot) in pending_states:
                slot = None
            if slot is not None:
                if conv is None:
                    conv, ssm = state_content(spec, fp, state_pool.device)
                if not (torch.equal(state_pool.conv[:, slot], conv.unsqueeze(1).to(state_pool.device))
                        and torch.equal(state_pool.ssm[:, slot], ssm.unsqueeze(1).to(state_pool.device))):
                    out.append(Violation("INTEGRITY", node.id, f"{tier} state differs from the state of its prefix"))
        stack.extend((c, start + len(tokens), fp) for c in node.children.values())
    return out
