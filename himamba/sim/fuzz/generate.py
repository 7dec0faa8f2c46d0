"""Random operation scripts: pool sizes, the operations, and the settings that make one legacy
bug reachable quickly. A script is plain JSON (``cache``, ``config``, ``ops``, ...)."""

from __future__ import annotations

import random
from collections.abc import Iterable

from himamba.errors import InvalidInputError
from himamba.sim.vocabulary import DEFAULT_WEIGHTS, VOCABULARY, Drawing


def default_config(page_size: int = 1, write_policy: str = "write_through", legacy: Iterable[str] = (),
                   storage: bool = True, seed: int = 0, scale: int = 1) -> dict:
    """Small pools, so that every kind of eviction happens often. The host tier's size varies
    with the seed (from half the device's to twice it): a small host makes backups fail.
    ``scale`` multiplies every pool (the trees grow with it: about 12 nodes at 1, 90 at 12, 100
    at 14)."""
    if scale < 1:
        raise InvalidInputError(f"scale must be at least 1, got {scale}")
    rng = random.Random(f"pools-{seed}")
    return {
        "device": "cpu", "page_size": page_size, "device_kv_tokens": 32 * page_size * scale,
        "host_kv_tokens": rng.choice((16, 24, 40, 64)) * page_size * scale, "device_mamba_slots": 4 * scale,
        "host_mamba_slots": rng.choice((4, 6, 10)) * scale,
        "write_policy": write_policy, "legacy": sorted(legacy), "enable_storage": storage,
    }




# Settings that make one legacy bug reachable quickly (the bug's trigger needs them): tiny pools
# (B1: pins, evictions and host pressure meet early), a host tier smaller than the device (B4:
# backups fail), the selective policy (B6: device nodes stay un-backed-up under prefetches),
# write-back (B7). B8 needs a shared prompt requested bare while its extensions hold the two state
# slots, its selective write still in flight (acks rare), then a state eviction that takes the
# extensions: two prompts only, many bare prompt requests and state evictions, and short episodes
# (the trigger needs a young tree).
TARGET_PROFILES: dict[str, dict] = {
    "B1": {"config": {"device_kv_tokens": 16, "host_kv_tokens": 16, "device_mamba_slots": 3}},
    "B4": {"config": {"host_kv_tokens": 16}},
    "B6": {"config": {"write_policy": "write_through_selective"}},
    "B7": {"config": {"write_policy": "write_back"}},
    "B8": {"config": {"device_mamba_slots": 2, "device_kv_tokens": 24, "write_policy": "write_through_selective"},
           "weights": {"lock": 4, "unlock": 6, "evict_mamba": 12, "evict": 3, "evict_host": 2, "ack": 1,
                       "events": 0, "load": 1},
           "shape": {"p_prompt": 0.8, "p_bare": 0.35, "n_prompts": 2},
           "episode": 100},
    # B23 needs an ancestor whose state lives on host only below which a matched node is on device
    # and not backed up: selective write-through, states dropped often, loads asked for often
    "B23": {"config": {"write_policy": "write_through_selective"},
            "weights": {"evict_mamba": 10, "load": 8}, "shape": {"p_prompt": 0.8, "n_prompts": 2}},
}
DEFAULT_EPISODE = 500
UNIFIED_SHARE = 0.25  # tiered fuzz scripts with cascade_rule="unified" (drawn by seed, beside the pools)
# eviction policies the fuzzer draws (by seed; lru half the time); the offline one runs without a
# future there, so LRU breaks its ties
FUZZ_EVICTIONS = ("lru", "lru", "lru", "lru_consumed", "flop_aware:0.5", "farthest_next_use")  # operations per episode when neither the caller nor a profile says

# The device-tier stress mix (tests/test_stress_device.py): plain inserts and matches, locks held
# for a while, evictions, and requests held across operations (prefilled chunk by chunk,
# finished or aborted), with a request that computes its whole prompt again one time in five.
STRESS_WEIGHTS: dict[str, int] = {
    "request": 14, "chunked": 4, "match": 16, "lock": 7, "unlock": 7, "evict": 7, "evict_mamba": 6,
    "evict_host": 0, "evict_mamba_host": 0, "ack": 0, "events": 0, "load": 0, "pin": 0, "unpin": 0,
    "prefetch": 0, "prefetch_done": 0, "req_start": 9, "req_chunk": 16, "req_finish": 10,
}


def generate_ops(seed: int, n: int, page_size: int = 1, vocab: int = 40,
                 weights: dict[str, int] | None = None, p_prompt: float = 0.4, p_bare: float = 0.25,
                 n_prompts: int = 4, p_fresh: float = 0.0) -> list[dict]:
    """``n`` random operations over sequences with shared prefixes (``n_prompts`` system
    prompts, multi-turn growth, short random branches), each drawn as its declaration in
    :data:`~himamba.sim.vocabulary.VOCABULARY` says. ``weights`` overrides how often each kind
    is drawn (the held requests, ``req_*``, are drawn only when given a weight); a request builds
    on a system prompt with probability ``p_prompt`` (else on an earlier sequence), repeats its
    base exactly with probability ``p_bare`` and, with probability ``p_fresh``, computes its
    matched prefix again (``fresh``)."""
    drawing = Drawing(random.Random(seed), page_size, vocab, p_prompt, p_bare, p_fresh)
    drawing.prompts = [drawing.block(drawing.rng.randint(1, 3)) for _ in range(n_prompts)]
    weights = {**DEFAULT_WEIGHTS, **(weights or {})}
    kinds, w = zip(*weights.items(), strict=True)
    ops: list[dict] = []
    while len(ops) < n:
        drawing.index = len(ops)
        kind = drawing.rng.choices(kinds, w)[0]
        op = VOCABULARY[kind].draw(drawing)
        if op is not None:
            ops.append(op)
    return ops


def make_script(seed: int, n: int, *, page_size: int = 1, write_policy: str | None = None,
                legacy: Iterable[str] = (), manual_acks: bool = True, cache: str = "tiered",
                storage: bool = True, profile: bool = True, scale: int = 1, copy_engine: str = "auto",
                weights: dict[str, int] | None = None, p_fresh: float = 0.0) -> dict:
    """A random script. With ``profile``, a single legacy switch brings its
    :data:`TARGET_PROFILES` settings (an explicit ``write_policy`` still wins); without one, a
    tiered script takes ``cascade_rule="unified"`` one time in four, and any script an eviction
    policy from :data:`FUZZ_EVICTIONS` (both by seed). A ``copy_engine``
    other than ``"auto"`` goes into the config (``"deferred"``: CUDA's copy timing on the CPU).
    ``weights`` and ``p_fresh`` go to :func:`generate_ops` (``weights`` over a profile's)."""
    legacy = sorted(legacy)
    prof = TARGET_PROFILES.get(legacy[0], {}) if profile and len(legacy) == 1 else {}
    config = default_config(page_size, write_policy or "write_through", legacy, storage and cache == "tiered", seed, scale)
    for key, value in prof.get("config", {}).items():
        if key == "write_policy" and write_policy is not None:
            continue
        config[key] = value * page_size if key.endswith("_tokens") else value
    if copy_engine != "auto":
        config["copy_engine"] = copy_engine
    if profile and not prof and cache == "tiered" and random.Random(f"cascade-{seed}").random() < UNIFIED_SHARE:
        config["cascade_rule"] = "unified"
    if profile and not prof:
        eviction = random.Random(f"eviction-{seed}").choice(FUZZ_EVICTIONS)
        if eviction != "lru":
            config["eviction"] = eviction
    return {
        "cache": cache, "manual_acks": manual_acks, "seed": seed, "config": config,
        "ops": generate_ops(seed, n, page_size, weights={**prof.get("weights", {}), **(weights or {})} or None,
                            p_fresh=p_fresh, **prof.get("shape", {})),
    }



def episode_seed(seed: int, episode: int) -> int:
    """The seed of one episode of a run: the run's own seed for the first, then derived ones
    (stable across Python versions and machines)."""
    return seed if episode == 0 else random.Random(f"{seed}/{episode}").getrandbits(40)


def episode_length(legacy: Iterable[str] = (), episode: int | None = None) -> int:
    """Operations per episode: ``episode`` when given, else the single legacy switch's profile
    value, else :data:`DEFAULT_EPISODE`."""
    if episode is not None:
        if episode < 1:
            raise InvalidInputError(f"an episode needs at least 1 operation, got {episode}")
        return episode
    legacy = sorted(legacy)
    if len(legacy) == 1:
        return TARGET_PROFILES.get(legacy[0], {}).get("episode", DEFAULT_EPISODE)
    return DEFAULT_EPISODE

