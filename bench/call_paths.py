"""How far one operation travels: the functions and files of himamba one call visits.

Counts the distinct himamba functions (and the files they live in) entered while one call runs,
for the two paths a newcomer traces first: a ``match_prefix`` that ends inside an edge (a split)
and an ``evict`` that ends in a write-back (write, drain, demote) on the tiered cache.

    python bench/call_paths.py
"""

from __future__ import annotations

import os
import sys

import torch

import himamba as hm


def visited(fn) -> tuple[int, int, list[str]]:
    """(functions, files, the functions as file:name) entered inside himamba while ``fn()`` runs."""
    root = os.path.dirname(hm.__file__)
    seen: set[tuple[str, str]] = set()

    def prof(frame, event, arg):
        if event == "call":
            path = frame.f_code.co_filename
            if path.startswith(root):
                seen.add((os.path.relpath(path, root), frame.f_code.co_qualname))

    sys.setprofile(prof)
    try:
        fn()
    finally:
        sys.setprofile(None)
    files = {f for f, _ in seen}
    return len(seen), len(files), sorted(f"{f}:{n}" for f, n in seen)


def put(cache, tokens: list[int]) -> None:
    kv, state = cache.kv_pool.alloc(len(tokens)), cache.mamba_pool.alloc(1)
    cache.insert(tokens, kv, state)


def mid_edge_match() -> tuple[int, int, list[str]]:
    cache = hm.HiMambaRadixCache(hm.CacheConfig(device="cpu"))
    put(cache, [1, 2, 3, 4])
    return visited(lambda: cache.match_prefix([1, 2, 9]))


def write_back_evict() -> tuple[int, int, list[str]]:
    cache = hm.HiMambaRadixCache(hm.CacheConfig(device="cpu", write_policy="write_back"))
    put(cache, [1, 2, 3, 4])
    return visited(lambda: cache.evict(4))


def main() -> None:
    torch.set_num_threads(1)
    for name, probe in (("match_prefix ending mid-edge", mid_edge_match), ("write-back evict", write_back_evict)):
        n_fn, n_files, names = probe()
        print(f"{name}: {n_fn} functions in {n_files} files")
        if "-v" in sys.argv:
            print("  " + "\n  ".join(names))


if __name__ == "__main__":
    main()
