"""The gallery as one self-contained HTML page: thumbnails as base64 JPEGs, styles and scripts inline.

A row per image, a column per model with its caption (and, where the images have references,
the per-image score, the row's best caption starred), the references last. A filter box keeps
rows whose image name, captions or references contain its text; a select (or a click on a
column title) sorts the rows. Blind pages show each row's captions in a shuffled order under
"caption 1..N", without model names or scores.
"""

from __future__ import annotations

import base64
import html
import io
import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from capexp.gallery.build import Gallery

__all__ = ["THUMBNAIL_PX", "render", "thumbnail"]

THUMBNAIL_PX = 160  # longest side of an embedded thumbnail

_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.3em; margin: 0 0 .3em; }
.meta { color: #555; margin-bottom: 1em; }
.controls { position: sticky; top: 0; background: #fff; padding: .5em 0; display: flex; gap: 1em; align-items: center; }
.controls input { width: 22em; padding: .3em; }
table { border-collapse: collapse; width: 100%; }
th, td { border: 1px solid #ddd; padding: .4em .6em; vertical-align: top; text-align: left; }
th { background: #f4f4f4; cursor: pointer; user-select: none; }
th.sorted-asc::after { content: " \\25B2"; } th.sorted-desc::after { content: " \\25BC"; }
td.image img { display: block; max-width: 160px; max-height: 160px; }
td.image .id { font-size: .85em; color: #555; word-break: break-all; }
td.caption .score { display: block; color: #666; font-size: .85em; }
td.caption.best { background: #e9f7e9; }
td.caption.best .score::before { content: "\\2605 best "; color: #1a7f1a; font-weight: bold; }
td.refs ul { margin: 0; padding-left: 1.1em; color: #444; }
tr.hidden { display: none; }
"""

_SCRIPT = """
(function () {
  const body = document.querySelector('#gallery tbody');
  const rows = Array.from(body.rows);
  const filter = document.getElementById('filter');
  const sort = document.getElementById('sort');
  const count = document.getElementById('count');
  function value(row, key) {
    const v = row.dataset[key];
    return key === 'image' ? v : (v === undefined || v === '' ? -Infinity : parseFloat(v));
  }
  function apply() {
    const [key, dir] = sort.value.split(':');
    const sign = dir === 'desc' ? -1 : 1;
    const sorted = rows.slice().sort((a, b) => {
      const x = value(a, key), y = value(b, key);
      const c = typeof x === 'string' ? x.localeCompare(y) : (x - y);
      return sign * c || (parseInt(a.dataset.index) - parseInt(b.dataset.index));
    });
    sorted.forEach(row => body.appendChild(row));
    const text = filter.value.trim().toLowerCase();
    let shown = 0;
    rows.forEach(row => {
      const hit = !text || row.textContent.toLowerCase().includes(text);
      row.classList.toggle('hidden', !hit);
      shown += hit ? 1 : 0;
    });
    count.textContent = shown + ' of ' + rows.length + ' images';
    document.querySelectorAll('#gallery th[data-key]').forEach(th => {
      th.classList.toggle('sorted-asc', th.dataset.key === key && dir === 'asc');
      th.classList.toggle('sorted-desc', th.dataset.key === key && dir === 'desc');
    });
  }
  document.querySelectorAll('#gallery th[data-key]').forEach(th => th.addEventListener('click', () => {
    const [key, dir] = sort.value.split(':');
    const next = th.dataset.key === key ? (dir === 'asc' ? 'desc' : 'asc') : th.dataset.first;
    sort.value = th.dataset.key + ':' + next;
    apply();
  }));
  filter.addEventListener('input', apply);
  sort.addEventListener('change', apply);
  apply();
})();
"""


def thumbnail(image, px: int = THUMBNAIL_PX) -> str:
    """A PIL image as a `data:` URI of a JPEG at most `px` on its longest side."""
    small = image.convert("RGB")
    small.thumbnail((px, px))
    buffer = io.BytesIO()
    small.save(buffer, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _sort_options(gallery: Gallery, blind: bool) -> list[tuple[str, str]]:
    """(select value `key:dir`, label), both directions of each key; the first is the page's initial order."""
    keys = [("image", "image name", "A to Z", "Z to A")]
    if gallery.scores is not None and not blind:
        metric = gallery.metric
        keys += [("best", f"best {metric}", "lowest first", "highest first"),
                 ("spread", f"{metric} spread", "narrowest first", "widest first")]
        keys += [(f"m{i}", f"{m.name} {metric}", "lowest first", "highest first") for i, m in enumerate(gallery.models)]
    options = []
    for key, label, up, down in keys:
        pair = [(f"{key}:asc", f"{label}, {up}"), (f"{key}:desc", f"{label}, {down}")]
        options += pair if key == "image" else pair[::-1]
    return options


def _head(gallery: Gallery, names: list[str], blind: bool, scored: bool) -> list[str]:
    """The table's header cells: the image, each model (sortable by its score when scored), the references."""
    head = ['<th data-key="image" data-first="asc">image</th>']
    for i, name in enumerate(names):
        run = gallery.models[i].run_id
        title = f' title="run {_e(run)}"' if run and not blind else ""
        if scored:
            head.append(f'<th data-key="m{i}" data-first="desc"{title}>{_e(name)}</th>')
        else:
            head.append(f"<th{title}>{_e(name)}</th>")
    if gallery.references is not None:
        head.append("<th>references</th>")
    return head


def _row(gallery: Gallery, r: int, order: list[int], scored: bool, px: int) -> str:
    """Image `r`'s row: its thumbnail, every model's caption in `order` (with its score), its references."""
    ref, captions = gallery.images[r], gallery.captions[r]
    data = {"index": str(r), "image": ref.image_id}
    cells = [f'<td class="image"><img src="{thumbnail(ref.load(), px)}" alt="{_e(ref.image_id)}">'
             f'<span class="id">{_e(ref.image_id)}</span></td>']
    scores = gallery.scores[r] if scored else None
    if scores:
        data |= {"best": f"{max(scores):.6f}", "spread": f"{max(scores) - min(scores):.6f}"}
        shown = [round(x, 3) for x in scores]  # the best as shown: ties all starred, none when all are 0
        best = max(shown)
    for m in order:
        klass = "caption"
        extra = ""
        if scores:
            data[f"m{m}"] = f"{scores[m]:.6f}"
            klass += " best" if shown[m] == best > 0 else ""
            extra = f'<span class="score">{_e(gallery.metric)} {scores[m]:.3f}</span>'
        cells.append(f'<td class="{klass}">{_e(captions[m])}{extra}</td>')
    if gallery.references is not None:
        items = "".join(f"<li>{_e(text)}</li>" for text in gallery.references[r])
        cells.append(f'<td class="refs"><ul>{items}</ul></td>')
    attrs = " ".join(f'data-{k}="{_e(v)}"' for k, v in data.items())
    return f"<tr {attrs}>{''.join(cells)}</tr>"


def render(gallery: Gallery, *, blind: bool = False, seed: int = 0, px: int = THUMBNAIL_PX) -> str:
    """The whole page as a string."""
    scored = gallery.scores is not None and not blind
    names = [f"caption {i + 1}" for i in range(len(gallery.models))] if blind else [m.name for m in gallery.models]
    head = _head(gallery, names, blind, scored)
    rows = [_row(gallery, r, order, scored, px) for r, order in enumerate(gallery.order(blind, seed))]
    options = "".join(f'<option value="{_e(v)}">{_e(label)}</option>' for v, label in _sort_options(gallery, blind))
    models = ", ".join(names) if blind else ", ".join(
        f"{m.name} ({m.run_id[:8]})" if m.run_id else m.name for m in gallery.models)
    scoring = (f"; {_e(gallery.metric)} of each caption against the references, the best of each row starred"
               if scored else "")
    blind_note = "; blind: each row's captions in a shuffled order" if blind else ""
    skipped = f"; {len(gallery.skipped)} unreadable images left out" if gallery.skipped else ""
    meta = json.dumps({"source": gallery.source, "models": names, "metric": gallery.metric if scored else None})
    meta = meta.replace("</", "<\\/")  # never ends the script element early
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>capexp gallery: {_e(gallery.source)}</title>
<style>{_STYLE}</style>
</head>
<body>
<h1>Captions of {_e(gallery.source)}</h1>
<div class="meta">{len(gallery.images)} images by {_e(models)}{scoring}{blind_note}{skipped}.</div>
<div class="controls">
<label>Filter <input id="filter" type="search" placeholder="words in a caption, reference or image name"></label>
<label>Sort by <select id="sort">{options}</select></label>
<span id="count"></span>
</div>
<table id="gallery">
<thead><tr>{''.join(head)}</tr></thead>
<tbody>
{chr(10).join(rows)}
</tbody>
</table>
<script type="application/json" id="gallery-meta">{meta}</script>
<script>{_SCRIPT}</script>
</body>
</html>
"""
