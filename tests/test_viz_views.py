"""Views for every reader: the colour-blind-safe palette (a simulation check), shapes per kind,
tooltips, the 720 pt width, escaping of every text the views did not write, the compact LRU
view, exported pages (play, per-step links, themes), failures in the stepper and in compare,
``hm.text`` and the playground. No timing assertions (sizes are checked)."""

from __future__ import annotations

import html
import json
import random
import re
import shutil

import pytest
from test_viz import boxes, kinds_tree

import himamba as hm
from himamba.sim.scenarios import b1_replay
from himamba.viz import graph, palette, style
from himamba.viz.frames import build_frame
from himamba.viz.play_session import PlaySession

pytestmark = pytest.mark.skipif(shutil.which("dot") is None, reason="graphviz 'dot' program not installed")

HOSTILE = '<script>alert("x")</script><img src=x onerror=alert(1)>'


# -- palette --------------------------------------------------------------------------------------
def test_fills_and_borders_stay_apart_under_simulated_colour_blindness():
    for colours, least in ((palette.fills(), 15.0), (palette.borders(), 15.0)):
        report = palette.palette_report(colours)
        assert set(report) == {"normal", "protanopia", "deuteranopia", "tritanopia"}
        for vision, (delta, a, b) in report.items():
            assert delta >= least, f"{a} and {b} look alike under {vision}: ΔE {delta:.1f}"
    for name, fill in palette.fills().items():
        assert palette.contrast(style.INK, fill) >= 4.5, name


def test_the_palette_check_catches_colours_that_merge():
    # the earlier palette: device green and host-only blue merge under tritanopia (ΔE about 6)
    earlier = {"device": "#b7e4c7", "host-only": "#bfdbfe", "full tombstone": "#d1d5db"}
    delta, a, b = palette.palette_report(earlier)["tritanopia"]
    assert delta < 10 and {a, b} == {"device", "host-only"}
    assert palette.distance("#ff0000", "#00ff00", "deuteranopia") < palette.distance("#ff0000", "#00ff00")


def test_every_node_kind_has_its_own_outline_and_the_legend_names_it():
    outlines = {kind: style.KIND_SHAPE[kind] for kind in style.KIND_TEXT}
    assert len(set(outlines.values())) == len(outlines)
    cache, n = kinds_tree()
    svg = hm.to_svg(cache)
    found = boxes(svg)
    assert 'stroke="' in svg and found[f"n{n['S'].id}"]["fill"] == style.FILL["full tombstone"]
    legend = html.unescape(svg)
    for words in ("device: square", "tombstone: cut corners", "host-only: rounded", "full tombstone: 3-D box"):
        assert words in legend


def test_svg_nodes_carry_tooltips_with_counters_tiers_and_times():
    cache, n = kinds_tree()
    svg = hm.to_svg(cache)
    tips = {m.group(1): html.unescape(m.group(2)) for m in
            re.finditer(r'<title>(n\d+)</title>\s*<g id="[^"]+"><a xlink:title="([^"]*)"', svg)}
    a = n["A"]
    tip = tips[f"n{a.id}"]
    for part in ("fl=0", "ml=0", "hr=1", "hmr=0", "hit_count=0", "f=", "m=-", "h=", "KV DH", "state h",
                 f"t={a.last_access_time:g}"):
        assert part in tip, (part, tip)
    assert len(tips) == cache.num_nodes() + 1


@pytest.mark.parametrize("n_nodes", [300])
def test_default_renders_fit_720_points_with_text_at_least_0_7(n_nodes):
    from test_viz import big_tree

    svg = hm.to_svg(big_tree(n_nodes))
    width = float(re.search(r'<svg width="([\d.]+)pt"', svg).group(1))
    assert graph.MAX_WIDTH_PT <= 726 and width <= graph.MAX_WIDTH_PT and graph.svg_scale(svg) >= 0.7


# -- escaping ---------------------------------------------------------------------------------------
def test_names_with_markup_are_escaped_everywhere_and_unprintable_names_refused(tmp_path):
    rec = b1_replay(False).recorder
    node = rec.steps[0].snapshot.nodes[1].id
    names = {node: HOSTILE}
    st = hm.Stepper(rec, names=names, all_steps=True)
    shown = []
    for i in range(len(st)):
        st.go(i)
        shown += [st.info_html.value, st.tree_html.value, st.lru_html.value]
    st.full_lru.value = True
    shown.append(st.lru_html.value)
    shown.append(hm.viz.style_lru(hm.lru_table(rec.steps[0], names=names)).to_html())
    shown.append(rec.to_html(tmp_path / "a.html", names=names).read_text())
    shown.append(hm.compare(rec, rec, names=names, labels=(HOSTILE, "b")).to_html(tmp_path / "b.html").read_text())
    joined = "".join(shown)
    assert "<script>alert" not in joined and "<img src=x" not in joined
    assert "&lt;script&gt;alert" in joined
    for bad in ("P\x07", "P\ud800", "a\nb"):
        with pytest.raises(hm.InvalidInputError, match="control character or lone surrogate"):
            hm.to_svg(rec.steps[0], names={node: bad})


def test_a_crafted_step_log_is_shown_as_text(tmp_path):
    rec = b1_replay(False).recorder
    lines = rec.to_jsonl(tmp_path / "steps.jsonl").read_text().splitlines()
    step = json.loads(lines[1])
    step["event"]["text"] = HOSTILE + "\x07"
    step["op"] = HOSTILE
    step["snapshot"]["nodes"][1]["key"] = [HOSTILE]
    crafted = tmp_path / "crafted.jsonl"
    crafted.write_text("\n".join([lines[0], json.dumps(step), *lines[2:]]) + "\n")
    loaded = hm.Recorder.load_jsonl(crafted)
    page = loaded.to_html(tmp_path / "crafted.html").read_text()
    assert "<script>alert" not in page and "<img src=x" not in page
    assert "&lt;script&gt;alert" in page and "\\x07" in page
    assert "<svg" in hm.to_svg(loaded.steps[0], title=None)  # dot takes the escaped title and key


# -- frames, exports, compare -------------------------------------------------------------------------
def test_a_big_tree_frame_carries_the_compact_lru_view_and_the_whole_table_on_demand(tmp_path):
    from test_recorder_bounds import tiered_tree

    cache = tiered_tree(1_000)
    rec = hm.Recorder(cache)
    rng = random.Random(2)
    with rec:
        while len(rec) < 21:
            hm.serve(cache, [rng.randrange(4) for _ in range(rng.randint(4, 16))])
    frame = build_frame(rec.steps[3])
    rows = sum(len(ids) for ids in rec.steps[3].snapshot.lru.values())
    assert frame.lru.count("<tr") < 60 < rows and "not shown" in frame.lru and not frame.lru_full
    assert frame.full_lru().count("<td>") >= 5 * rows
    page = hm.viz.to_html(rec.steps[:21], tmp_path / "big.html")
    size = page.stat().st_size
    assert size < 2_000_000, size
    assert page.read_text().count('<section class="hm-row"') == 21


def test_exported_pages_have_play_per_step_links_and_themes(tmp_path):
    rec = b1_replay(True).recorder
    text = rec.to_html(tmp_path / "p.html", theme="dark").read_text()
    assert 'id="hm-play"' in text and "data-theme='dark'" in text and 'id="hm-theme"' in text
    anchors = [int(a) for a in re.findall(r'data-step="(\d+)"', text)]
    assert anchors == [s.index for s in rec.steps]
    assert all(f'href="#step={a}"' in text for a in anchors)
    assert "step 22 · FAILED" in text or f"step {rec.steps[-1].index} · FAILED" in text
    with pytest.raises(hm.InvalidInputError, match="theme"):
        rec.to_html(tmp_path / "q.html", theme="neon")


def test_compare_aligns_by_operation_and_shows_the_crash():
    on, off = b1_replay(True), b1_replay(False)
    cmp = hm.compare(on.recorder, off.recorder, labels=("on", "off"))
    assert all(x.op == y.op for x, y in cmp.pairs if x is not None and y is not None)
    ops = [(x or y).op_index for x, y in cmp.pairs]
    assert ops == sorted(ops)  # operations in order, never interleaved
    (row, label, step), = cmp.failures
    assert label == "on" and step.failed and cmp.pairs[row][1] is None or cmp.pairs[row][1] is not step
    rows = cmp.rows()
    crash = [r for r in rows if any(f is not None and f.failed for f in r.frames)]
    assert len(crash) == 1 and crash[0].differs and "FAILED" in crash[0].heading
    assert "fails at aligned step" in cmp.intro()


def test_the_stepper_shows_a_failure_step_by_default():
    rec = b1_replay(True).recorder
    st = hm.Stepper(rec)
    st.go(-1)
    assert st.step.failed and "FAILED" in st.info_html.value and "double" in st.info_html.value


# -- text and playground --------------------------------------------------------------------------------
def test_text_dump_lists_every_node_with_its_counters():
    cache, n = kinds_tree()
    dump = hm.text(cache, names={n["A"]: "A"})
    lines = dump.splitlines()
    assert lines[0].startswith("root · 6 nodes") and len(lines) == 7
    assert any(line.startswith("├─ A #1 [1,2,3] 3 tok  KV=DH M=h  fl=0 ml=0 hr=1 hmr=0") for line in lines)
    assert "└─ " in dump and "LOCK" in dump and "PIN" in dump
    assert hm.text(cache, max_lines=2).splitlines()[-1].startswith("… 4 more nodes")


def test_the_playground_does_undoes_and_replays():
    s = PlaySession("tiered, small, acks by hand")
    s.do("serve", "1 2 3 4")
    after_first = hm.take(s.cache)
    steps = s.do("serve", [1, 2, 5, 6])
    assert any(st.kind == "split" for st in steps) and not s.violations()
    s.do("evict", 4)
    s.do("ack")
    assert s.undo().name == "ack"
    s.undo()
    s.undo()
    assert hm.take(s.cache) == after_first and [a.name for a in s.actions] == ["serve"]
    with pytest.raises(hm.InvalidInputError, match="whole numbers"):
        s.do("serve", "1 two")
    with pytest.raises(hm.InvalidInputError, match="tiered"):
        PlaySession("device only, small").do("evict_host", 2)
    assert hm.take(s.cache) == after_first and len(s.actions) == 1
    from himamba.sim.fuzz.run import run_script

    assert run_script(s.script()).failure is None


def test_the_playground_widget_updates_its_panes():
    pg = hm.Playground()
    pg.arg.value = "1 2 3 4"
    pg.do_button.click()
    first = pg.tree_pane.value
    assert "<svg" in first and "1 action(s)" in pg.status.value and "node_created" in pg.steps_pane.value
    pg.arg.value = "1 2 x"
    pg.do_button.click()
    assert "not done" in pg.status.value and pg.tree_pane.value == first
    pg.action.value = "match"
    pg.arg.value = "1 2"
    pg.do_button.click()
    assert "split" in pg.steps_pane.value and pg.tree_pane.value != first
    assert "2 action(s)" in pg.status.value and "root · " in pg.text_pane.value
    pg.undo_button.click()
    assert "took back: match 1 2" in pg.status.value and "1 action(s)" in pg.status.value
