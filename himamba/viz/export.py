"""Export: one self-contained HTML file that steps through recorded frames, offline.

Everything is inline — the SVG trees (with a tooltip per node), the compact LRU views, a little
CSS and JavaScript; the page loads nothing from anywhere. Controls: previous / next / play
buttons, a slider, the arrow keys (left / right, Home / End), a checkbox that shows every step
instead of decision steps only, and a light / dark theme menu. Each step has a link
(``page.html#step=12``: the recording's step 12, or the comparison's aligned row 12); opening
the page at such a link shows that step. Every text the page did not write is escaped.
A page has one or more columns (one recording, or two side by side for a comparison).

    write_page(path, "B1", rows, columns=["switch on", "switch off"])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from html import escape
from pathlib import Path

from himamba.errors import InvalidInputError
from himamba.validate import prepare_output_file, write_text_no_follow
from himamba.viz.frames import Frame
from himamba.viz.style import legend_html


@dataclass(frozen=True)
class Row:
    """One position of the player: a frame per column (``None`` where a column has no step
    there), its heading, whether it is a decision row (shown by default), whether its columns
    differ, and ``anchor``: the number its link uses (``page.html#step=12``; default: its
    position)."""

    frames: tuple[Frame | None, ...]
    heading: str
    decision: bool
    differs: bool = False
    anchor: int | None = None


THEMES = ("auto", "light", "dark")

_CSS = """
:root{--bg:#fff;--fg:#111827;--line:#e5e7eb;--muted:#6b7280;--link:#1d4ed8}
html[data-theme=dark]{--bg:#0f172a;--fg:#e5e7eb;--line:#374151;--muted:#9ca3af;--link:#93c5fd}
@media (prefers-color-scheme: dark){html[data-theme=auto]{--bg:#0f172a;--fg:#e5e7eb;--line:#374151;
  --muted:#9ca3af;--link:#93c5fd}}
body{font-family:sans-serif;margin:12px auto;padding:0 12px;max-width:1500px;color:var(--fg);background:var(--bg)}
a{color:var(--link)}
.hm-controls{position:sticky;top:0;background:var(--bg);padding:6px 0;border-bottom:1px solid var(--line);z-index:1}
.hm-controls button{font-size:14px;padding:2px 10px}
.hm-controls input[type=range]{width:35%;vertical-align:middle}
.hm-row{display:none}.hm-row.hm-on{display:block}
.hm-cols{display:flex;gap:12px;align-items:flex-start}
.hm-col{flex:1;min-width:0;overflow-x:auto;border-top:3px solid var(--line);padding-top:4px}
.hm-col.hm-differs{border-top:3px dashed #e08a00}
.hm-col svg{max-width:100%;height:auto}
.hm-col svg>g>polygon:first-of-type{fill:transparent}
.hm-col table{font-size:11px;border-collapse:collapse;margin:4px 8px 4px 0;display:inline-table;vertical-align:top}
.hm-col td,.hm-col th{padding:1px 5px;border-bottom:1px solid var(--line)}
.hm-col caption{text-align:left;font-weight:bold}
.hm-title{font-weight:bold;margin:4px 0}
.hm-empty,.hm-gap td{color:var(--muted);font-style:italic}
.hm-failed{border-left:6px double #d55e00;padding-left:6px}
"""

_JS = """
(function(){
  var rows=[].slice.call(document.querySelectorAll('.hm-row'));
  var all=document.getElementById('hm-all'), slider=document.getElementById('hm-slider');
  var play=document.getElementById('hm-play'), theme=document.getElementById('hm-theme');
  var label=document.getElementById('hm-pos'), shown=[], at=0, timer=null;
  function pick(){shown=rows.filter(function(r){return all.checked||r.dataset.decision==='1';});
    if(!shown.length){shown=rows;} slider.max=Math.max(shown.length-1,0);}
  function show(i){if(!shown.length){return;} at=Math.max(0,Math.min(i,shown.length-1));
    rows.forEach(function(r){r.classList.remove('hm-on');}); shown[at].classList.add('hm-on');
    slider.value=at; label.textContent='step '+(at+1)+' of '+shown.length+
      (all.checked?' (all steps)':' (decision steps)');
    document.getElementById('hm-prev').disabled=at===0;
    document.getElementById('hm-next').disabled=at===shown.length-1;
    if(history.replaceState){history.replaceState(null,'','#step='+shown[at].dataset.step);}}
  function stop(){if(timer){clearInterval(timer);timer=null;} play.textContent='▶ play';}
  function fromHash(){var m=/step=(\\d+)/.exec(location.hash); if(!m){return false;}
    var r=rows.filter(function(x){return x.dataset.step===m[1];})[0]; if(!r){return false;}
    if(shown.indexOf(r)<0){all.checked=true; pick();} show(shown.indexOf(r)); return true;}
  document.getElementById('hm-prev').onclick=function(){stop();show(at-1);};
  document.getElementById('hm-next').onclick=function(){stop();show(at+1);};
  play.onclick=function(){if(timer){stop();return;} if(at>=shown.length-1){show(0);}
    play.textContent='■ stop'; timer=setInterval(function(){if(at>=shown.length-1){stop();}else{show(at+1);}},900);};
  slider.oninput=function(){stop();show(parseInt(slider.value,10));};
  all.onchange=function(){var cur=shown[at]; pick(); var j=shown.indexOf(cur); show(j<0?0:j);};
  theme.onchange=function(){document.documentElement.dataset.theme=theme.value;};
  window.addEventListener('hashchange',fromHash);
  document.addEventListener('keydown',function(e){
    if(e.target&&e.target.tagName==='SELECT'){return;}
    if(e.key==='ArrowRight'){stop();show(at+1);e.preventDefault();}
    else if(e.key==='ArrowLeft'){stop();show(at-1);e.preventDefault();}
    else if(e.key==='Home'){show(0);} else if(e.key==='End'){show(shown.length-1);}});
  function openAt(){var n=document.body.dataset.open; if(!n){return false;}
    var r=rows.filter(function(x){return x.dataset.step===n;})[0]; if(!r){return false;}
    if(shown.indexOf(r)<0){all.checked=true; pick();} show(shown.indexOf(r)); return true;}
  pick(); if(!fromHash()&&!openAt()){show(0);}
})();
"""


def _cell(frame: Frame | None, differs: bool) -> str:
    cls = "hm-col hm-differs" if differs else "hm-col"
    if frame is None:
        return f'<div class="{cls}"><p class="hm-empty">(no step here)</p></div>'
    if frame.lru_full:
        full = f"<details><summary>the whole LRU table</summary>{frame.lru_full}</details>"
    elif frame.lru:
        full = ('<p class="hm-empty">The whole LRU table is left out of this page to keep it small: '
                "<code>hm.lru_table(step)</code> in a notebook, or the stepper's full-table box.</p>")
    else:
        full = ""
    return (f'<div class="{cls}">{frame.info_html()}'
            f"{_inline(frame.svg)}{frame.lru}{full}</div>")


def _inline(svg: str) -> str:
    """SVG markup without its XML prolog and DOCTYPE (they may not appear inside HTML)."""
    start = svg.find("<svg")
    return svg[start:] if start >= 0 else svg


def page(title: str, rows: Sequence[Row], columns: Sequence[str] = (), intro: str = "",
         theme: str = "auto", open_at: int | None = None) -> str:
    """The HTML page (a string). ``columns`` names the columns (a header row); ``intro`` is
    HTML placed under the title (the caller escapes what it did not write); ``theme``:
    ``"auto"`` (the reader's setting), ``"light"`` or ``"dark"`` (a menu on the page changes it);
    ``open_at``: the anchor of the row the page opens on (a ``#step=N`` link still wins)."""
    if theme not in THEMES:
        raise InvalidInputError(f"theme must be one of {', '.join(THEMES)}, got {theme!r}")
    head = ""
    if columns:
        head = '<div class="hm-cols">' + "".join(
            f'<div class="hm-col"><b>{escape(c)}</b></div>' for c in columns) + "</div>"
    body = []
    for i, row in enumerate(rows):
        cells = "".join(_cell(f, row.differs) for f in row.frames)
        anchor = i if row.anchor is None else int(row.anchor)
        body.append(f'<section class="hm-row" data-decision="{int(row.decision)}" data-index="{i}" '
                    f'data-step="{anchor}"><h3>{escape(row.heading)} <a href="#step={anchor}" '
                    f'title="link to this step">#</a></h3><div class="hm-cols">{cells}</div></section>')
    n_decision = sum(r.decision for r in rows)
    options = "".join(f'<option value="{t}"{" selected" if t == theme else ""}>{t}</option>' for t in THEMES)
    controls = ('<div class="hm-controls"><button id="hm-prev" title="previous step (←)">◀ prev</button> '
                '<button id="hm-next" title="next step (→)">next ▶</button> '
                '<button id="hm-play" title="play the steps one by one">▶ play</button> '
                f'<input id="hm-slider" type="range" min="0" max="0" value="0" aria-label="step"> '
                f'<span id="hm-pos"></span> <label{"" if n_decision < len(rows) else " hidden"}>'
                f'<input id="hm-all" type="checkbox"> all steps ({len(rows)}; {n_decision} decision steps)</label> '
                f'<label>theme <select id="hm-theme">{options}</select></label> '
                '<small>keys: ← → · link a step: page.html#step=N</small>' + legend_html() + head + "</div>")
    return (f"<!doctype html><html data-theme='{theme}'><head><meta charset='utf-8'>"
            f"<title>{escape(title)}</title><style>{_CSS}</style></head>"
            f"<body{'' if open_at is None else f' data-open={chr(34)}{int(open_at)}{chr(34)}'}>"
            f"<h1>{escape(title)}</h1>{intro}{controls}{''.join(body)}<script>{_JS}</script></body></html>")


def write_page(path: str | Path, title: str, rows: Sequence[Row], columns: Sequence[str] = (),
               intro: str = "", theme: str = "auto", open_at: int | None = None) -> Path:
    """Write :func:`page` to ``path`` (parent folders created). Follows no symbolic link and
    replaces no file that is not a regular file: the page is written beside ``path`` and
    renamed into place. Returns the path."""
    text = page(title, rows, columns, intro, theme, open_at)
    path = Path(path)
    if not path.parent.is_symlink():
        path.parent.mkdir(parents=True, exist_ok=True)
    return write_text_no_follow(prepare_output_file(path, force=True), text)
