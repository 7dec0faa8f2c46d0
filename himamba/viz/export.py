"""Export: one self-contained HTML file that steps through recorded frames, offline.

Everything is inline — the SVG trees, the LRU tables, a little CSS and JavaScript; the page
loads nothing from anywhere. Controls: previous / next buttons, a slider, the arrow keys
(left / right, Home / End) and a checkbox that shows every step instead of decision steps only.
A page has one or more columns (one recording, or two side by side for a comparison).

    write_page(path, "B1", rows, columns=["switch on", "switch off"])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from html import escape
from pathlib import Path

from himamba.viz.frames import Frame
from himamba.viz.style import legend_html


@dataclass(frozen=True)
class Row:
    """One position of the player: a frame per column (``None`` where a column has no step
    there), its heading and whether it is a decision row (shown by default)."""

    frames: tuple[Frame | None, ...]
    heading: str
    decision: bool
    differs: bool = False


_CSS = """
body{font-family:sans-serif;margin:12px auto;max-width:1500px;color:#111827}
.hm-controls{position:sticky;top:0;background:#fff;padding:6px 0;border-bottom:1px solid #e5e7eb;z-index:1}
.hm-controls button{font-size:14px;padding:2px 10px}
.hm-controls input[type=range]{width:45%;vertical-align:middle}
.hm-row{display:none}.hm-row.hm-on{display:block}
.hm-cols{display:flex;gap:12px;align-items:flex-start}
.hm-col{flex:1;min-width:0;overflow-x:auto;border-top:3px solid #e5e7eb;padding-top:4px}
.hm-col.hm-differs{border-top-color:#f97316}
.hm-col svg{max-width:100%;height:auto}
.hm-col table{font-size:11px;border-collapse:collapse}.hm-col td,.hm-col th{padding:1px 5px}
.hm-title{font-weight:bold;margin:4px 0}
.hm-empty{color:#6b7280;font-style:italic}
"""

_JS = """
(function(){
  var rows=[].slice.call(document.querySelectorAll('.hm-row'));
  var all=document.getElementById('hm-all'), slider=document.getElementById('hm-slider');
  var label=document.getElementById('hm-pos'), shown=[], at=0;
  function pick(){shown=rows.filter(function(r){return all.checked||r.dataset.decision==='1';});
    if(!shown.length){shown=rows;} slider.max=Math.max(shown.length-1,0);}
  function show(i){if(!shown.length){return;} at=Math.max(0,Math.min(i,shown.length-1));
    rows.forEach(function(r){r.classList.remove('hm-on');}); shown[at].classList.add('hm-on');
    slider.value=at; label.textContent='step '+(at+1)+' of '+shown.length+
      (all.checked?' (all steps)':' (decision steps)');
    document.getElementById('hm-prev').disabled=at===0;
    document.getElementById('hm-next').disabled=at===shown.length-1;}
  document.getElementById('hm-prev').onclick=function(){show(at-1);};
  document.getElementById('hm-next').onclick=function(){show(at+1);};
  slider.oninput=function(){show(parseInt(slider.value,10));};
  all.onchange=function(){var cur=shown[at]; pick(); var j=shown.indexOf(cur); show(j<0?0:j);};
  document.addEventListener('keydown',function(e){
    if(e.key==='ArrowRight'){show(at+1);e.preventDefault();}
    else if(e.key==='ArrowLeft'){show(at-1);e.preventDefault();}
    else if(e.key==='Home'){show(0);} else if(e.key==='End'){show(shown.length-1);}});
  pick(); show(0);
})();
"""


def _cell(frame: Frame | None, differs: bool) -> str:
    cls = "hm-col hm-differs" if differs else "hm-col"
    if frame is None:
        return f'<div class="{cls}"><p class="hm-empty">(no step here)</p></div>'
    return (f'<div class="{cls}"><div class="hm-title">{escape(frame.title)}</div>{frame.changes}'
            f'{_inline(frame.svg)}{frame.lru}</div>')


def _inline(svg: str) -> str:
    """SVG markup without its XML prolog and DOCTYPE (they may not appear inside HTML)."""
    start = svg.find("<svg")
    return svg[start:] if start >= 0 else svg


def page(title: str, rows: Sequence[Row], columns: Sequence[str] = (), intro: str = "") -> str:
    """The HTML page (a string). ``columns`` names the columns (a header row); ``intro`` is
    HTML placed under the title."""
    head = ""
    if columns:
        head = '<div class="hm-cols">' + "".join(
            f'<div class="hm-col"><b>{escape(c)}</b></div>' for c in columns) + "</div>"
    body = []
    for i, row in enumerate(rows):
        cells = "".join(_cell(f, row.differs) for f in row.frames)
        body.append(f'<section class="hm-row" data-decision="{int(row.decision)}" data-index="{i}">'
                    f'<h3>{escape(row.heading)}</h3><div class="hm-cols">{cells}</div></section>')
    n_decision = sum(r.decision for r in rows)
    controls = ('<div class="hm-controls"><button id="hm-prev">◀ prev</button> '
                '<button id="hm-next">next ▶</button> '
                f'<input id="hm-slider" type="range" min="0" max="0" value="0" aria-label="step"> '
                f'<span id="hm-pos"></span> <label{"" if n_decision < len(rows) else " hidden"}>'
                f'<input id="hm-all" type="checkbox"> all steps ({len(rows)}; {n_decision} decision steps)</label> '
                '<small>keys: ← →</small>' + legend_html() + head + "</div>")
    return ("<!doctype html><html><head><meta charset='utf-8'>"
            f"<title>{escape(title)}</title><style>{_CSS}</style></head><body>"
            f"<h1>{escape(title)}</h1>{intro}{controls}{''.join(body)}<script>{_JS}</script></body></html>")


def write_page(path: str | Path, title: str, rows: Sequence[Row], columns: Sequence[str] = (),
               intro: str = "") -> Path:
    """Write :func:`page` to ``path`` (parent folders created); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page(title, rows, columns, intro), encoding="utf-8")
    return path
