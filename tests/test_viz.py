"""The visual layer (himamba.viz): SVG trees, tables, the stepper, JSON round trips, collapse.

SVG checks parse graphviz's output: each node box is a ``<g class="node">`` group whose
``<title>`` is the box name (``n<id>`` for nodes, ``g<id>`` ghosts, ``c<id>`` collapsed boxes)
and whose first shape carries the fill and border colours. No timing assertions.
"""

from __future__ import annotations

import dataclasses
import html
import random
import re
import shutil

import pytest
from helpers import make_cache, node_at, put

import himamba as hm
from himamba.observe.snapshot import take
from himamba.viz import graph, style, tables
from himamba.viz.collapse import choose

pytestmark = pytest.mark.skipif(shutil.which("dot") is None, reason="graphviz 'dot' program not installed")

NODE_GROUP = re.compile(r'<g id="[^"]+" class="node">\s*<title>([^<]+)</title>(.*?)</g>', re.S)
SHAPE = re.compile(r'<(?:polygon|path|ellipse) fill="([^"]+)" stroke="([^"]+)"(?: stroke-width="([^"]+)")?')


def boxes(svg: str) -> dict[str, dict[str, str]]:
    """Box name -> fill, stroke, stroke width of its first shape, the number of outlines
    (peripheries) and the texts inside (unescaped)."""
    out = {}
    for name, body in NODE_GROUP.findall(svg):
        shape = SHAPE.search(body)
        fill, stroke, width = shape.groups() if shape else ("", "", None)
        texts = [html.unescape(t) for t in re.findall(r"<text[^>]*>([^<]*)</text>", body)]
        out[html.unescape(name)] = {"fill": fill, "stroke": stroke, "width": width or "1",
                                    "peripheries": 1 + body.count('<polygon fill="none"'), "text": " ".join(texts)}
    return out


def kinds_tree() -> tuple[hm.HiMambaRadixCache, dict[str, hm.TreeNode]]:
    """A write-back tiered cache holding one node of each kind, one locked and one pinned:
    A[1,2,3] tombstone (KV=DH M=h, pinned), B[4,5] host-only (KV=H M=h), S[5,6] full tombstone
    (split node, KV=D M=-), D[9,9,9] device (KV=D M=d, locked), E / F device leaves under S."""
    cache = make_cache(hm.HiMambaRadixCache, write_policy="write_back")
    put(cache, [1, 2, 3])
    put(cache, [1, 2, 3, 4, 5])
    a, b = node_at(cache, [1, 2, 3]), node_at(cache, [1, 2, 3, 4, 5])
    assert cache.write_backup(a, write_back=True) == 3
    cache.writing_check(write_back=True)
    put(cache, [9, 9, 9])
    put(cache, [5, 6, 1])
    put(cache, [5, 6, 2])
    d = node_at(cache, [9, 9, 9])
    assert cache.evict(2) == 2  # oldest device leaf B: backed up and demoted
    assert cache.evict_mamba(1) == 1  # oldest state: A (internal) becomes a tombstone
    cache.inc_lock_ref(d)
    cache.protect_host(a)
    nodes = {"A": a, "B": b, "S": node_at(cache, [5, 6]), "D": d, "E": node_at(cache, [5, 6, 1])}
    assert (a.kv_tier(), a.state_tier()) == ("DH", "h")
    assert (b.kv_tier(), b.state_tier()) == ("H", "h")
    assert (nodes["S"].kv_tier(), nodes["S"].state_tier()) == ("D", "-")
    assert (d.kv_tier(), d.state_tier()) == ("D", "d")
    return cache, nodes


# -- the tree ---------------------------------------------------------------------------------------
def test_svg_shows_every_node_with_its_id_and_counters():
    cache, _ = kinds_tree()
    snap = take(cache)
    svg = hm.to_svg(cache, lru_rank=True)
    found = boxes(svg)
    assert {f"n{v.id}" for v in snap.nodes} <= found.keys()
    for v in snap.nodes[1:]:
        text = found[f"n{v.id}"]["text"]
        assert f"#{v.id}" in text
        assert f"KV={v.kv_tier} M={v.state_tier}" in text
        assert (f"fl={v.full_lock_ref} ml={v.mamba_lock_ref} hr={v.host_ref_counter} "
                f"hmr={v.host_mamba_ref_counter}") in text
        assert f"{len(v.key)} tok" in text
    # the compact legend is one strip in the graph label, not a box; "full" is the long one
    assert "legend" not in found and "full tombstone: 3-D box" in html.unescape(svg) and "changed" in svg
    assert "legend" in boxes(hm.to_svg(cache, legend="full"))
    bare = hm.to_svg(cache, legend=False)
    assert "full tombstone: 3-D box" not in html.unescape(bare) and "legend" not in boxes(bare)
    with pytest.raises(hm.InvalidInputError, match="legend"):
        hm.render(cache, legend="long")


def test_kinds_locks_and_pins_look_different():
    cache, n = kinds_tree()
    found = boxes(hm.to_svg(cache))
    box = {k: found[f"n{node.id}"] for k, node in n.items()}
    fills = {k: box[k]["fill"] for k in ("A", "B", "S", "E")}
    assert fills == {"A": style.FILL["tombstone"], "B": style.FILL["host-only"],
                     "S": style.FILL["full tombstone"], "E": style.FILL["device"]}
    assert len(set(fills.values())) == 4
    assert box["D"]["fill"] == style.FILL["device"]
    # locked: red, thick, LOCK; pinned: purple, double, PIN; plain: neither
    assert box["D"]["stroke"] == style.LOCK_COLOR and float(box["D"]["width"]) >= 3 and "LOCK" in box["D"]["text"]
    assert box["A"]["stroke"] == style.PIN_COLOR and box["A"]["peripheries"] == 2 and "PIN" in box["A"]["text"]
    for k in ("B", "S", "E"):
        assert box[k]["stroke"] == style.BORDER and box[k]["peripheries"] == 1
        assert "LOCK" not in box[k]["text"] and "PIN" not in box[k]["text"]
    assert "PIN" not in box["D"]["text"] and "LOCK" not in box["A"]["text"]
    # leaf-set markers: E is a device leaf, B a host leaf
    assert "Ld" in box["E"]["text"].split() and "Lh" in box["B"]["text"].split()
    # a node both locked and pinned keeps both markers
    cache.inc_lock_ref(n["A"])
    both = boxes(hm.to_svg(cache))[f"n{n['A'].id}"]
    assert "LOCK" in both["text"] and "PIN" in both["text"] and both["stroke"] == style.LOCK_COLOR


def test_lru_rank_labels_follow_the_lists():
    cache, n = kinds_tree()
    snap = take(cache)
    found = boxes(hm.to_svg(snap, lru_rank=True))
    for name, short in (("full", "f"), ("mamba", "m"), ("host_mamba", "h")):
        for pos, nid in enumerate(snap.lru[name], 1):
            assert f"{short}{pos}" in found[f"n{nid}"]["text"].split()
    assert "f1" not in boxes(hm.to_svg(snap))[f"n{snap.lru['full'][0]}"]["text"].split()


def test_focus_draws_the_root_the_path_and_the_focused_subtree_and_folds_the_rest():
    cache, n = kinds_tree()
    s = n["S"]
    found = boxes(hm.to_svg(cache, focus=s, legend=False))
    names = {k for k in found if k.startswith("n")}
    assert names == {"n0", f"n{s.id}"} | {f"n{c.id}" for c in s.children.values()}
    folded = {k: v for k, v in found.items() if k.startswith("c")}
    assert set(folded) == {"c0"} and "more nodes" in folded["c0"]["text"]
    hidden = int(re.search(r"(\d+) more", folded["c0"]["text"]).group(1))
    assert hidden + len(names) == len(take(cache))
    with pytest.raises(KeyError):
        hm.render(cache, focus=10_000)
    with pytest.raises(hm.InvalidInputError, match="layout"):
        hm.render(cache, layout="BT")


def test_names_show_on_boxes_and_in_tables():
    cache, n = kinds_tree()
    names = {n["A"]: "A", n["S"].id: "S"}
    found = boxes(hm.to_svg(cache, names=names))
    assert found[f"n{n['A'].id}"]["text"].split()[:2] == ["A", f"#{n['A'].id}"]
    assert found[f"n{n['S'].id}"]["text"].split()[:2] == ["S", f"#{n['S'].id}"]
    assert found[f"n{n['D'].id}"]["text"].split()[0] == f"#{n['D'].id}"
    table = hm.node_table(cache, names=names)
    assert table.loc[n["A"].id, "name"] == "A" and table.loc[n["D"].id, "name"] == ""
    lru = hm.lru_table(cache, names=names)
    assert set(lru[lru["node"] == n["S"].id]["name"]) <= {"S"} and "name" not in hm.lru_table(cache)


def test_render_takes_a_cache_a_snapshot_or_a_step_and_nothing_else():
    cache, _ = kinds_tree()
    assert hm.to_svg(cache) == hm.to_svg(take(cache))
    with pytest.raises(TypeError):
        hm.render([1, 2, 3])
    with hm.Recorder(cache) as rec:
        cache.evict(1)
    svg = hm.to_svg(rec.steps[1])
    assert f"step {rec.steps[1].index}" in svg


def test_displayable_objects_return_an_svg_mimebundle():
    cache, _ = kinds_tree()
    with hm.Recorder(cache) as rec:
        cache.evict(1)
    for obj in (cache, take(cache), rec.steps[0]):
        bundle = obj._repr_mimebundle_()
        assert set(bundle) == {"image/svg+xml", "text/plain"}
        assert "<svg" in bundle["image/svg+xml"]
        assert len(bundle["text/plain"]) < 5_000
    assert bundle["text/plain"].startswith(str(rec.steps[0]))


# -- collapse ---------------------------------------------------------------------------------------
def big_tree(n_nodes: int = 1_000, seed: int = 0) -> hm.MambaRadixCache:
    """A device-only cache with at least ``n_nodes`` nodes from random shared-prefix sequences."""
    rng = random.Random(seed)
    cache = hm.MambaRadixCache(hm.CacheConfig(device="cpu", device_kv_tokens=40 * n_nodes,
                                              device_mamba_slots=2 * n_nodes))
    while cache.num_nodes() < n_nodes:
        for _ in range(max(1, (n_nodes - cache.num_nodes()) // 2)):
            tokens = [rng.randrange(6) for _ in range(rng.randint(4, 24))]
            slot = cache.mamba_pool.alloc(1)
            if cache.insert(tokens, cache.kv_pool.alloc(len(tokens)), slot).mamba_exist:
                cache.mamba_pool.free(slot)
    return cache


def test_max_nodes_collapses_a_thousand_node_tree():
    cache = big_tree()
    snap = take(cache)
    assert len(snap) > 1_000
    svg = hm.to_svg(snap, legend=False)
    found = boxes(svg)
    assert len(found) <= 150
    collapsed = {k: v for k, v in found.items() if k.startswith("c")}
    assert collapsed and all("more node" in v["text"] for v in collapsed.values())
    shown = [k for k in found if k.startswith("n")]
    hidden = sum(int(re.search(r"(\d+) more", v["text"]).group(1)) for v in collapsed.values())
    assert len(shown) + hidden == len(snap)
    # a deep highlighted node is kept with its whole path
    deep = max(snap.nodes, key=lambda v: v.start + len(v.key))
    found = boxes(hm.to_svg(snap, legend=False, highlight=[deep.id]))
    path, p = [], deep.id
    while p is not None:
        path.append(p)
        p = snap.node(p).parent
    assert all(f"n{i}" in found for i in path)
    assert style.HIGHLIGHT in hm.to_svg(snap, legend=False, highlight=[deep.id])
    # the box count alone bounds a drawing at natural size; both off: one box per node
    assert len(boxes(hm.to_svg(snap, legend=False, max_nodes=40, fit=False))) <= 40
    assert len(boxes(hm.to_svg(snap, legend=False, max_nodes=None, fit=False))) == len(snap)


SVG_SIZE = re.compile(r'<svg width="([\d.]+)pt" height="([\d.]+)pt"')


@pytest.mark.parametrize(("n_nodes", "layout"), [(49, "TB"), (1_000, "TB"), (1_000, "LR")])
def test_a_render_fits_a_notebook_without_shrinking_its_text(n_nodes, layout):
    snap = take(big_tree(n_nodes))
    svg = hm.to_svg(snap, layout=layout)
    width = float(SVG_SIZE.search(svg).group(1))
    assert width <= graph.MAX_WIDTH_PT and graph.svg_scale(svg) >= graph.MIN_SCALE
    found = boxes(svg)
    assert "n0" in found  # the root is always drawn
    shown = [k for k in found if k.startswith("n")]
    folded = [v for k, v in found.items() if k.startswith("c")]
    assert sum(int(re.search(r"(\d+) more", v["text"]).group(1)) for v in folded) + len(shown) == len(snap)
    assert all("tok" in v["text"] for v in folded)
    # drawn whole at natural size, the same tree is far bigger (LR: taller) than the fitted one
    natural = hm.to_svg(snap, layout=layout, fit=False, max_nodes=None)
    assert graph.svg_scale(natural) == 1.0 and max(map(float, SVG_SIZE.search(natural).groups())) > 2_000


def test_collapse_prefers_locked_nodes_and_keeps_the_tree_connected():
    cache = big_tree(300, seed=1)
    snap = take(cache)
    deep = max(snap.nodes, key=lambda v: v.start + len(v.key))
    cache.inc_lock_ref(node_at(cache, [t for v in _path(snap, deep.id) for t in v.key]))
    snap = take(cache)
    vis = choose(snap, snap.root.id, 40, prefer=[v.id for v in snap.nodes if v.locked])
    kept = set(vis.keep)
    assert all(v.id in kept for v in snap.nodes if v.locked)
    assert all(snap.node(i).parent in kept for i in vis.keep[1:])
    assert len(kept) + len(vis.hidden) <= 40
    assert len(kept) + sum(vis.hidden.values()) == len(snap)


def _path(snap, nid):
    out = []
    while nid is not None and snap.node(nid).parent is not None:
        out.append(snap.node(nid))
        nid = snap.node(nid).parent
    return out[::-1]


# -- tables -----------------------------------------------------------------------------------------
def b3_cache(legacy: bool) -> tuple[hm.HiMambaRadixCache, hm.TreeNode, hm.TreeNode, hm.TreeNode]:
    """A[1,2,3] → X[4,5] backed up, then a newer device leaf Y[20,21]; a prefetch of
    [1..7] anchored at the root walks through A and X (retiming them)."""
    cache = make_cache(hm.HiMambaRadixCache, write_policy="write_back", enable_storage=True,
                       legacy={"B3"} if legacy else set())
    put(cache, [1, 2, 3])
    put(cache, [1, 2, 3, 4, 5])
    a, x = node_at(cache, [1, 2, 3]), node_at(cache, [1, 2, 3, 4, 5])
    cache.write_backup(a, write_back=True)
    cache.write_backup(x, write_back=True)
    cache.writing_check(write_back=True)
    cache.check_storage_progress()
    put(cache, [20, 21])
    return cache, a, x, node_at(cache, [20, 21])


@pytest.mark.parametrize("legacy", [True, False], ids=["B3_on", "B3_off"])
def test_lru_table_flags_the_b3_mismatch_only_when_the_order_is_wrong(legacy):
    cache, a, x, y = b3_cache(legacy)
    before = hm.lru_table(cache)
    assert not before["mismatch"].any()
    cache.storage.store_prefix(list(range(1, 8)))
    assert cache.prefetch_from_storage("r", cache.root_node, list(range(1, 8))) == 7
    assert cache.check_prefetch_progress("r") == 2
    assert x.last_access_time > a.last_access_time > y.last_access_time
    df = hm.lru_table(cache)
    full = df[df["list"] == "full"].set_index("node")
    assert list(full.index) == cache.full_lru_list.order()
    if legacy:
        assert list(full.index) == [y.id, x.id, a.id]
        # one row out of place is the fewest: without Y the list is in time order
        assert full["mismatch"].tolist() == [True, False, False]
        assert full["time_rank"].tolist() == [3, 1, 2]
    else:
        assert not df[df["must_match"]]["mismatch"].any()
        assert list(full.index) == [x.id, a.id, y.id]
    styled = hm.viz.style_lru(df).to_html()
    assert (tables.MISMATCH_BG.split(": ")[1] in styled) is legacy


@pytest.mark.parametrize("legacy", [True, False], ids=["B3_on", "B3_off"])
def test_b3_steps_name_the_nodes_retimed_without_moving(legacy):
    cache, a, x, y = b3_cache(legacy)
    ys = [y]
    for tokens in ([30, 31], [40, 41]):
        put(cache, tokens)
        ys.append(node_at(cache, tokens))
    cache.storage.store_prefix(list(range(1, 8)))
    cache.prefetch_from_storage("r", cache.root_node, list(range(1, 8)))
    with hm.Recorder(cache) as rec:
        cache.check_prefetch_progress("r")
    refresh = rec.texts(["lru_refresh"])
    if legacy:
        assert refresh == [f"#{a.id} retimed without moving in the full LRU (legacy B3); mamba LRU refreshed",
                           f"#{x.id} retimed without moving in the full LRU (legacy B3); mamba LRU refreshed"]
    else:
        assert refresh == [f"#{n.id} retimed and moved to the MRU end of its device LRU lists" for n in (a, x)]
    df = hm.lru_table(cache)
    full = df[df["list"] == "full"]
    # the misplaced rows are exactly the two retimed nodes, not the three leaves that kept their place
    assert set(full[full["mismatch"]]["node"]) == ({a.id, x.id} if legacy else set())
    assert set(full["node"]) == {a.id, x.id, *(n.id for n in ys)}


def test_lru_table_on_a_hand_built_snapshot():
    cache, _ = kinds_tree()
    snap = take(cache)
    assert not hm.lru_table(snap)["mismatch"].any()
    order = snap.lru["full"]
    swapped = dataclasses.replace(snap, lru={**snap.lru, "full": (order[1], order[0], *order[2:])})
    df = hm.lru_table(swapped)
    flagged = df[df["mismatch"]]
    assert set(flagged["list"]) == {"full"} and len(flagged) == 1 and set(flagged["node"]) <= {order[0], order[1]}


@pytest.mark.parametrize(("times", "wrong"), [
    ([5, 4, 3, 2], set()), ([1, 5, 4, 3], {0}), ([5, 4, 9, 8, 3], {2, 3}), ([3, 3, 1], set()),
    ([], set()), ([1, 2, 3], {1, 2}),
])
def test_misplaced_is_the_fewest_rows_out_of_time_order(times, wrong):
    got = tables.misplaced(times)
    assert got == wrong
    rest = [t for i, t in enumerate(times) if i not in got]
    assert rest == sorted(rest, reverse=True)


def test_node_and_counter_tables():
    cache, n = kinds_tree()
    snap = take(cache)
    nodes = hm.node_table(cache)
    assert list(nodes.index) == [v.id for v in snap.nodes]
    d, a = nodes.loc[n["D"].id], nodes.loc[n["A"].id]
    assert (d["fl"], d["ml"], d["locked"], d["pinned"]) == (1, 1, True, False)
    assert (a["hr"], a["KV"], a["M"], a["kind"], a["pinned"]) == (1, "DH", "h", "tombstone", True)
    assert nodes.loc[n["S"].id, "kind"] == "full tombstone"
    assert nodes.loc[n["B"].id, "Lh"] and nodes.loc[n["E"].id, "Ld"]
    html = hm.viz.style_nodes(nodes).to_html()
    assert tables.LOCKED_BG.split(": ")[1] in html and tables.PINNED_BG.split(": ")[1] in html
    counters = hm.counters_table(cache).set_index("name")
    used, cap = snap.pools["device KV"]
    assert (counters.loc["device KV", "used"], counters.loc["device KV", "capacity"]) == (used, cap)
    assert counters.loc["device KV", "percent"] == round(100 * used / cap, 1)
    assert counters.loc["full_evictable_size", "value"] == snap.counters["full_evictable_size"]


def test_diff_table_lists_the_changes_of_a_step():
    cache, n = kinds_tree()
    a = take(cache)
    cache.dec_lock_ref(n["D"])
    b = take(cache)
    df = hm.diff_table(a, b)
    assert len(df) == len(hm.observe.diff(a, b))
    node_rows = df[df["what"] == "node"]
    assert f"#{n['D'].id}" in set(node_rows["subject"])
    assert "counter" in set(df["what"])
    with hm.Recorder(cache) as rec:
        cache.evict(1)
    step = rec.steps[1]
    assert hm.diff_table(step)["sentence"].tolist() == hm.observe.diff(step.before, step.snapshot)
    with pytest.raises(TypeError):
        hm.diff_table(a)


# -- B1 cascade in steps ------------------------------------------------------------------------------
def record_b1(legacy: bool) -> tuple[hm.Recorder, hm.TreeNode]:
    """Reference §5 B1: P[1,2,3] backed up without a state, pinned by its storage backup in
    flight; its only child C[4,5] (host-only) is removed by evict_host, recorded."""
    cache = hm.HiMambaRadixCache(hm.CacheConfig(device="cpu", enable_storage=True, write_policy="write_back",
                                                legacy={"B1"} if legacy else set()), manual_acks=True)
    put(cache, [1, 2, 3])
    put(cache, [1, 2, 3, 4, 5])
    p, c = node_at(cache, [1, 2, 3]), node_at(cache, [1, 2, 3, 4, 5])
    assert cache.evict_mamba(1) == 1
    assert cache.evict(5) == 5
    assert (p.host_ref_counter, p.host_mamba_ref_counter) == (1, 0)
    ops = {op.payload["node"].id: op for op in cache.storage.ops}
    cache.storage.complete(ops[c.id])
    assert cache.check_storage_progress() == 1
    with hm.Recorder(cache) as rec:
        assert cache.evict_host(2) == 2
    return rec, p


def test_b1_cascade_steps_differ_with_the_switch():
    on, p_on = record_b1(True)
    off, p_off = record_b1(False)
    cascade_on, cascade_off = on.texts(["cascade"]), off.texts(["cascade"])
    assert on.texts() != off.texts()
    assert any(t.startswith("stop: host pin") for t in cascade_off)
    assert not any("host pin" in t for t in cascade_on)
    assert any(f"#{p_on.id} is a childless tombstone" in t for t in cascade_on)
    deleted_on = [s for s in on.steps if p_on.id in s.deleted]
    assert deleted_on and not any(p_off.id in s.deleted for s in off.steps)
    # the step that deletes P shows it as a ghost, dashed grey, under the root
    found = boxes(hm.to_svg(deleted_on[0]))
    ghost = found[f"g{p_on.id}"]
    assert ghost["stroke"] == style.GHOST and "DELETED" in ghost["text"]
    svg = hm.to_svg(deleted_on[0])
    assert f"n0&#45;&gt;g{p_on.id}" in svg
    stop = next(s for s in off.steps if s.text.startswith("stop: host pin"))
    assert f"n{p_off.id}" in boxes(hm.to_svg(stop))


# -- stepper and JSON ------------------------------------------------------------------------------------
def recorded() -> hm.Recorder:
    cache, n = kinds_tree()
    cache.dec_lock_ref(n["D"])
    with hm.Recorder(cache) as rec:
        cache.evict(6)
        cache.evict_host(3)
    assert len(rec) >= 4
    return rec


def test_stepper_buttons_and_stepping_back():
    rec = recorded()
    st = hm.Stepper(rec, lru_rank=True, all_steps=True)
    assert st.index == 0 and st.step is rec.steps[0] and len(st) == len(rec)
    assert st.prev_button.disabled and not st.next_button.disabled
    first, first_info = st.tree_html.value, st.info_html.value
    assert first.lstrip().startswith("<?xml") and "<svg" in first
    # one title per step: in the info pane, not again inside the drawing; no legend per step
    assert first == hm.to_svg(rec.steps[0], lru_rank=True, title=False, legend=False)
    assert rec.steps[0].text in first_info and html.escape(rec.steps[0].text) not in first
    st.next_button.click()
    assert st.index == 1 and st.slider.value == 1 and st.play.value == 1
    assert st.tree_html.value != first and html.escape(rec.steps[1].text) in st.info_html.value
    second = st.tree_html.value
    st.next()
    st.prev_button.click()
    assert st.index == 1 and st.tree_html.value == second
    st.prev()
    assert st.index == 0 and st.tree_html.value == first and st.info_html.value == first_info
    st.prev()
    assert st.index == 0
    st.go(-1)
    assert st.index == len(rec) - 1 and st.next_button.disabled
    st.next()
    assert st.index == len(rec) - 1
    st.slider.value = 2  # the slider (and play, linked to it) drive the view too
    assert st.index == 2 and st.step is rec.steps[2]
    st.play.value = 3
    assert st.index == 3
    with pytest.raises(IndexError):
        st.go(len(rec))
    assert "full LRU:" in st.lru_html.value and "<th>pos</th>" in st.lru_html.value  # the compact view
    assert st.widget.children[1].value.count("hm-legend") == 1  # the legend, once


def test_stepper_shows_decision_steps_unless_asked_for_all():
    rec = recorded()
    decisions = [s for s in rec.steps if s.changed or s.deleted or s.kind == "cascade"
                 or hm.diff(s.before, s.snapshot)]
    assert 0 < len(decisions) < len(rec)
    st = hm.Stepper(rec)
    assert len(st) == len(decisions)
    seen = []
    for i in range(len(st)):
        st.go(i)
        seen.append(st.step)
    assert seen == decisions and all(s.kind not in ("op_begin", "op_end") for s in seen)
    st.go(1)
    kept = st.step
    st.all_steps.value = True  # the toggle: every step, staying on the one shown
    assert len(st) == len(rec) and st.step is kept
    st.all_steps.value = False
    assert len(st) == len(decisions) and st.step is kept


def test_to_html_writes_one_offline_page(tmp_path):
    rec = recorded()
    names = {rec.steps[0].snapshot.nodes[1].id: "A"}
    path = rec.to_html(tmp_path / "steps.html", names=names)
    page = path.read_text()
    assert page.count('<section class="hm-row"') == len(rec)
    n_decision = page.count('data-decision="1"')
    assert 0 < n_decision < len(rec)
    assert page.count("<svg") == len(rec) and "<?xml" not in page and "<!DOCTYPE svg" not in page
    assert not re.search(r'(?:src|href)="(?:https?:)?//', page) and "<img" not in page
    assert page.count("hm-legend") == 1 and 'id="hm-next"' in page and "ArrowRight" in page
    assert "A #" in page


def test_compare_aligns_two_recordings_and_starts_where_they_differ(tmp_path):
    on, p_on = record_b1(True)
    off, p_off = record_b1(False)
    cmp = hm.compare(on, off, labels=("B1 on", "B1 off"), names={p_on.id: "P"})
    first = cmp.first_difference
    assert first is not None and first > 0
    a, b = cmp.pairs[first]
    assert a is not None and b is not None and a.text != b.text
    assert all(x.text == y.text for x, y in cmp.pairs[:first])
    assert any("host pin" in y.text for _, y in cmp.pairs[first:] if y is not None)
    rows = cmp.rows()
    assert len(rows) == len(cmp.pairs) - cmp.start and rows[first - cmp.start].differs
    page = cmp.to_html(tmp_path / "b1.html").read_text()
    assert "B1 on" in page and "B1 off" in page and page.count('class="hm-col hm-differs"') >= 2
    same = hm.compare(on, on)
    assert same.first_difference is None and same.start == 0
    with pytest.raises(hm.InvalidInputError, match="labels"):
        hm.compare(on, off, labels=("only one",))


def test_stepper_without_steps_and_bad_input():
    st = hm.Stepper([])
    assert st.step is None and st.next() is None and "no steps" in st.info_html.value
    with pytest.raises(TypeError):
        hm.Stepper([1, 2])


def test_snapshot_json_round_trip():
    cache, _ = kinds_tree()
    snap = take(cache)
    back = hm.Snapshot.from_json(snap.to_json())
    assert back == snap
    assert hm.to_svg(back, lru_rank=True) == hm.to_svg(snap, lru_rank=True)


def test_recorder_jsonl_round_trip_and_stepper_on_loaded_steps(tmp_path):
    rec = recorded()
    loaded = hm.Recorder.load_jsonl(rec.to_jsonl(tmp_path / "steps.jsonl"))
    assert loaded.initial == rec.initial and len(loaded) == len(rec)
    for a, b in zip(rec.steps, loaded.steps, strict=True):
        assert (a.index, a.op_index, a.op, a.kind, a.text, a.event.nodes) == (b.index, b.op_index, b.op, b.kind, b.text, b.event.nodes)
        assert (a.snapshot, a.changed, a.deleted, a.before) == (b.snapshot, b.changed, b.deleted, b.before)
    live, offline = hm.Stepper(rec, all_steps=True), hm.Stepper(loaded, all_steps=True)
    for i in range(len(rec)):
        live.go(i)
        offline.go(i)
        assert offline.tree_html.value == live.tree_html.value
        assert offline.info_html.value == live.info_html.value
    for record_again in (loaded.start, loaded.attach, loaded.__enter__):  # no cache to record
        with pytest.raises(ValueError, match="loaded from a file"):
            record_again()


@pytest.mark.parametrize("make_listener", [lambda c: hm.Recorder(c), lambda c: hm.sim.EvictionProbe(c)],
                         ids=["recorder", "probe"])
def test_listeners_attach_once_and_detach_for_good(make_listener):
    """Attaching twice subscribes once, detaching twice is harmless, and leaving the ``with``
    block stops the events (the bus goes quiet again)."""
    cache = make_cache(hm.MambaRadixCache, device_kv_tokens=32, device_mamba_slots=4)
    listener = make_listener(cache)
    seen = []
    forward = listener._on_event

    def count(event) -> None:
        seen.append(event)
        forward(event)

    listener._on_event = count
    with listener:
        assert listener.attach() is listener
        put(cache, [1, 2, 3])
        assert cache.events.active
    n = len(seen)
    assert n > 0 and len({id(e) for e in seen}) == n  # each event once
    listener.detach()
    put(cache, [4, 5])
    assert len(seen) == n and not cache.events.active
