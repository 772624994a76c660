"""Luminate's offline exploration page and its headless-Chromium screenshot.

``render_html`` writes a self-contained page (inline CSS/JS, no external resources): a 2-D
grid of responses by two dimensions, five semantic-zoom levels (dot, title, keywords,
summary, full text), value filters and "more like this" from precomputed neighbours.
``screenshot`` renders it with headless Chromium (``find_chromium``; on Debian
``apt-get install -y chromium``).
"""

from __future__ import annotations

import dataclasses
import html
import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from jaxlm.agents.luminate import Dimension, Response

_CSS = """
body{font-family:sans-serif;margin:12px;background:#fafafa}
#controls{margin-bottom:8px} .filt{display:inline-block;margin-right:14px;font-size:12px}
table.grid{border-collapse:collapse} table.grid td,table.grid th{border:1px solid #bbb;
vertical-align:top;padding:4px;min-width:140px} table.grid th{background:#eee;font-size:13px}
.card{display:inline-block;margin:2px;padding:3px;border-radius:5px;background:#fff;
border:1px solid #ccc;max-width:260px;font-size:12px;vertical-align:top}
.dot{display:inline-block;width:10px;height:10px;border-radius:5px;background:#3a7}
.lvl{display:none} .z1 .l1,.z2 .l1,.z2 .l2,.z3 .l1,.z3 .l2,.z3 .l3,.z4 .l1,.z4 .l2,.z4 .l3,
.z4 .l4{display:block} .l1{font-weight:bold} .l2{color:#555} .l4{white-space:pre-wrap}
.hidden{display:none} .faded{opacity:.2} .sel{outline:2px solid #e60}
.more{font-size:10px;cursor:pointer;color:#06c}
"""

_JS = """
const D=JSON.parse(document.getElementById('data').textContent);
const zoom=document.getElementById('zoom');
function setZoom(){document.body.className='z'+zoom.value;
 document.getElementById('zl').textContent=
  ['dot','title','keywords','summary','full text'][zoom.value];}
zoom.oninput=setZoom;setZoom();
function applyFilters(){const on={};document.querySelectorAll('input.f').forEach(c=>{
 (on[c.dataset.dim]=on[c.dataset.dim]||[]);if(c.checked)on[c.dataset.dim].push(c.value);});
 D.responses.forEach(r=>{const el=document.getElementById('r'+r.id);let ok=true;
  for(const k in r.labels){if(on[k]&&on[k].indexOf(r.labels[k])<0)ok=false;}
  el.classList.toggle('hidden',!ok);});}
document.querySelectorAll('input.f').forEach(c=>c.onchange=applyFilters);
function more(id){const r=D.responses[id];const keep=new Set([id].concat(r.neighbours));
 D.responses.forEach(x=>{const el=document.getElementById('r'+x.id);
  el.classList.toggle('faded',!keep.has(x.id));el.classList.toggle('sel',x.id===id);});}
function clearMore(){document.querySelectorAll('.card').forEach(e=>{
 e.classList.remove('faded');e.classList.remove('sel');});}
"""


_SCRIPT_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028",
                   "\u2029": "\\u2029"}


def script_json(obj: Any) -> str:
    """JSON safe inside a ``<script>`` element: no ``<``, ``>`` or ``&`` appear literally
    (they are ``\\u`` escapes, which JSON.parse restores), so model text such as
    ``</script>`` or ``<!--<script>`` cannot end the element or switch the HTML parser
    into its script-escape states."""
    text = json.dumps(obj, default=str)
    for ch, rep in _SCRIPT_ESCAPES.items():
        text = text.replace(ch, rep)
    return text


def render_html(prompt: str, responses: Sequence[Response], dims: Sequence[Dimension],
                x_dim: str, y_dim: str, title: str = "Luminate design space",
                zoom: int = 1, metrics: dict[str, Any] | None = None) -> str:
    """A self-contained offline page (inline CSS/JS, no external resources).

    The grid puts ``x_dim`` values on columns and ``y_dim`` values on rows; each response is
    a card with five zoom levels (dot, title, keywords, summary, full text); per-dimension
    value filters; "more like this" highlights the precomputed neighbours.

    Raises:
        DimensionError: ``x_dim`` / ``y_dim`` not among ``dims``.
    """
    from jaxlm.agents.luminate import DimensionError

    by = {d.name: d for d in dims}
    for a in (x_dim, y_dim):
        if a not in by:
            raise DimensionError(f"unknown dimension {a!r}; the page has {sorted(by)}")
    if not 0 <= zoom <= 4:
        raise ValueError(f"zoom must be in 0..4, got {zoom}")
    e = html.escape
    xs, ys = by[x_dim].values, by[y_dim].values
    cells: dict[tuple[str, str], list[str]] = {(x, y): [] for x in xs for y in ys}
    for r in responses:
        key = (r.labels.get(x_dim), r.labels.get(y_dim))
        if key not in cells:
            continue
        tip = "; ".join(f"{k}: {v}" for k, v in r.labels.items())
        cells[key].append(
            f'<div class="card" id="r{r.id}" title="{e(tip)}"><span class="dot"></span>'
            f'<div class="lvl l1">{e(r.title)}</div>'
            f'<div class="lvl l2">{e(", ".join(r.keywords))}</div>'
            f'<div class="lvl l3">{e(r.summary)}</div><div class="lvl l4">{e(r.text)}</div>'
            f'<span class="more" onclick="more({r.id})">more like this</span></div>')
    rows = ["<tr><th>" + e(y_dim) + " \\ " + e(x_dim) + "</th>"
            + "".join(f"<th>{e(x)}</th>" for x in xs) + "</tr>"]
    for y in ys:
        rows.append(f"<tr><th>{e(y)}</th>" + "".join(
            f"<td>{''.join(cells[x, y])}</td>" for x in xs) + "</tr>")
    filters = "".join(
        f'<span class="filt"><b>{e(d.name)}</b>: ' + "".join(
            f'<label><input type="checkbox" class="f" data-dim="{e(d.name)}" value="{e(v)}" '
            f'checked>{e(v)}</label> ' for v in d.values) + "</span>" for d in dims)
    data = {"prompt": prompt, "dims": [{"name": d.name, "kind": d.kind, "values": d.values}
                                       for d in dims],
            "responses": [dataclasses.asdict(r) for r in responses], "metrics": metrics or {}}
    blob = script_json(data)
    met = ""
    if metrics:
        met = "<details><summary>metrics</summary><pre>" + e(
            json.dumps(metrics, indent=1, default=str)) + "</pre></details>"
    return (
        f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{e(title)}</title>"
        f"<style>{_CSS}</style></head><body class=\"z{zoom}\"><h2>{e(title)}</h2>"
        f"<p>Prompt: <i>{e(prompt)}</i> &mdash; {len(responses)} responses</p>"
        f"<div id=\"controls\">Zoom <input type=\"range\" id=\"zoom\" min=\"0\" max=\"4\" "
        f"value=\"{zoom}\"> <span id=\"zl\"></span> <button onclick=\"clearMore()\">clear"
        f"</button><br>{filters}</div>"
        f"<table class=\"grid\">{''.join(rows)}</table>{met}"
        f"<script type=\"application/json\" id=\"data\">{blob}</script>"
        f"<script>{_JS}</script></body></html>")


CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable",
                  "chrome", "headless_shell")


def find_chromium() -> str | None:
    """Path of a Chromium/Chrome binary on PATH (None when none is installed)."""
    import shutil

    for n in CHROMIUM_NAMES:
        p = shutil.which(n)
        if p:
            return p
    return None


def screenshot(html_path: Any, png_path: Any, size: tuple[int, int] = (1400, 1000),
               timeout: float = 60.0) -> Any:
    """Renders ``html_path`` with headless Chromium to ``png_path`` (offline).

    Raises:
        FileNotFoundError: no Chromium binary (see ``find_chromium``).
    """
    import pathlib
    import subprocess

    exe = find_chromium()
    if exe is None:
        raise FileNotFoundError(f"no Chromium binary on PATH (tried {CHROMIUM_NAMES})")
    html_path, png_path = pathlib.Path(html_path).resolve(), pathlib.Path(png_path).resolve()
    subprocess.run([exe, "--headless", "--disable-gpu", "--no-sandbox", "--hide-scrollbars",
                    f"--window-size={size[0]},{size[1]}", f"--screenshot={png_path}",
                    html_path.as_uri()], check=True, capture_output=True, timeout=timeout)
    return png_path
