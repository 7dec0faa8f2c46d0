"""Random operation scripts: pool sizes, the operations, and the settings that make one legacy
bug reachable quickly. A script is plain JSON (``cache``, ``config``, ``ops``, ...)."""

from __future__ import annotations

import random
from collections.abc import Iterable

from himamba.errors import InvalidInputError


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
}
DEFAULT_EPISODE = 500  # operations per episode when neither the caller nor a profile says

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
    prompts, multi-turn growth, short random branches). ``weights`` overrides how often each kind
    is drawn (the held requests, ``req_*``, are drawn only when given a weight); a request builds
    on a system prompt with probability ``p_prompt`` (else on an earlier sequence), repeats its
    base exactly with probability ``p_bare`` and, with probability ``p_fresh``, computes its
    matched prefix again (``fresh``)."""
    rng = random.Random(seed)
    ps = page_size

    def block(k: int) -> list[int]:
        return [rng.randrange(1, vocab) for _ in range(k * ps)]

    prompts = [block(rng.randint(1, 3)) for _ in range(n_prompts)]
    seqs: list[list[int]] = []
    overrides = weights
    weights = {"request": 10, "chunked": 2, "match": 4, "lock": 3, "unlock": 3, "evict": 3,
               "evict_mamba": 2, "evict_host": 2, "evict_mamba_host": 2, "ack": 4, "events": 4,
               "load": 3, "pin": 1, "unpin": 1, "prefetch": 1, "prefetch_done": 1,
               "req_start": 0, "req_chunk": 0, "req_finish": 0}
    weights.update(overrides or {})
    kinds, w = zip(*weights.items(), strict=True)
    ops: list[dict] = []
    while len(ops) < n:
        i = len(ops)
        kind = rng.choices(kinds, w)[0]
        if kind in ("request", "chunked", "req_start"):
            base = rng.choice(seqs) if seqs and rng.random() < 1 - p_prompt else rng.choice(prompts)
            if len(base) > 16 * ps:  # keep requests well inside the small pools
                base = rng.choice(prompts)
            extra = 0 if kind == "request" and rng.random() < p_bare else rng.randint(1 if kind == "request" else 2, 3)
            tokens = base + block(extra)
            if not tokens:
                tokens = block(1)
            seqs = (seqs + [tokens])[-24:]
            op = {"op": kind, "tokens": tokens}
            if kind == "chunked":
                op["chunk"] = ps * rng.randint(1, 2)
            elif kind == "req_start":
                op["cow"] = rng.random() < 0.5
            elif p_fresh and rng.random() < p_fresh:
                op["fresh"] = True
        elif kind in ("match", "lock", "load", "pin"):
            if not seqs:
                continue
            # locks also go to shared prompts, which end at split nodes that hold no state
            t = rng.choice(prompts) if kind == "lock" and rng.random() < 0.3 else rng.choice(seqs)
            cut = len(t) if kind != "match" else rng.randint(1, len(t))
            op = {"op": kind, "tokens": t[:cut]}
            if kind == "load":
                op["quota"] = rng.choice([None, 4, 64])
            if kind == "pin":
                op["mamba"] = rng.random() < 0.5
            if kind == "lock":
                op["exact"] = rng.random() < 0.5
        elif kind in ("unlock", "unpin", "ack"):
            op = {"op": kind, "k": rng.randrange(1 << 16)}
        elif kind == "req_chunk":
            op = {"op": kind, "k": rng.randrange(1 << 16), "pages": rng.randint(1, 4), "track": rng.random() < 0.85}
        elif kind == "req_finish":
            op = {"op": kind, "k": rng.randrange(1 << 16), "insert": rng.random() < 0.8, "cut": rng.randrange(1 << 16)}
        elif kind in ("evict", "evict_host"):
            op = {"op": kind, "n": rng.randint(1, 12 * ps)}
        elif kind in ("evict_mamba", "evict_mamba_host"):
            op = {"op": kind, "n": rng.randint(1, 3)}
        elif kind == "prefetch":
            if not seqs:
                continue
            t = rng.choice(seqs) + block(rng.randint(1, 2))
            op = {"op": kind, "tokens": t, "split": ps * rng.randint(0, len(t) // ps - 1), "req": f"p{i}"}
        else:
            op = {"op": kind}
        ops.append(op)
    return ops


def make_script(seed: int, n: int, *, page_size: int = 1, write_policy: str | None = None,
                legacy: Iterable[str] = (), manual_acks: bool = True, cache: str = "tiered",
                storage: bool = True, profile: bool = True, scale: int = 1, copy_engine: str = "auto",
                weights: dict[str, int] | None = None, p_fresh: float = 0.0) -> dict:
    """A random script. With ``profile``, a single legacy switch brings its
    :data:`TARGET_PROFILES` settings (an explicit ``write_policy`` still wins). A ``copy_engine``
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

