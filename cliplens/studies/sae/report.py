"""The static HTML report of study 002 (``results/reports/sae/index.html``): it opens from disk,
needs no server and no network, and links each collage by a path relative to itself.

Per SAE: its metrics rows and one row per described feature (collage, firing rate, purity on the
toy world, the description in each language with its detection AUC and flags).  A filter box
and a minimum-AUC field narrow the rows; a click on a column header sorts by it.
"""

from __future__ import annotations

import html
import math
from typing import Any, Mapping, Sequence

STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.5em} h2{font-size:1.2em;margin-top:2em}
table{border-collapse:collapse;margin:.6em 0}
td,th{border:1px solid #ccc;padding:3px 6px;vertical-align:top;font-size:.9em}
th{background:#f2f2f2;cursor:pointer;user-select:none}
th.sorted-asc::after{content:" \\25B2"} th.sorted-desc::after{content:" \\25BC"}
td.num{text-align:right;font-variant-numeric:tabular-nums}
img.collage{width:144px;height:144px;image-rendering:pixelated;display:block}
.badge{background:#fde68a;border-radius:3px;padding:0 4px;font-size:.8em}
.flag{color:#b91c1c;font-size:.8em} .controls{margin:.5em 0}
.good{background:#dcfce7} .bad{background:#fee2e2}
"""

SCRIPT = """
(function () {
  function value(cell) {
    var v = cell.getAttribute('data-value');
    if (v === null) { v = cell.textContent.trim(); }
    var n = parseFloat(v);
    return isNaN(n) ? v.toLowerCase() : n;
  }
  function sortBy(table, col, th) {
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    var asc = !th.classList.contains('sorted-asc');
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (c) {
      c.classList.remove('sorted-asc', 'sorted-desc');
    });
    th.classList.add(asc ? 'sorted-asc' : 'sorted-desc');
    rows.sort(function (a, b) {
      var x = value(a.cells[col]), y = value(b.cells[col]);
      if (x === y) { return 0; }
      return ((x < y) ? -1 : 1) * (asc ? 1 : -1);
    });
    rows.forEach(function (r) { body.appendChild(r); });
  }
  function filter(section) {
    var text = section.querySelector('input.filter').value.toLowerCase();
    var least = parseFloat(section.querySelector('input.min-auc').value);
    var shown = 0;
    Array.prototype.forEach.call(section.querySelectorAll('table.features tbody tr'),
      function (r) {
        var auc = parseFloat(r.getAttribute('data-auc'));
        var ok = r.textContent.toLowerCase().indexOf(text) >= 0 &&
                 (isNaN(least) || (!isNaN(auc) && auc >= least));
        r.style.display = ok ? '' : 'none';
        if (ok) { shown += 1; }
      });
    section.querySelector('.count').textContent = shown;
  }
  document.querySelectorAll('table.sortable').forEach(function (table) {
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, col) {
      th.addEventListener('click', function () { sortBy(table, col, th); });
    });
  });
  document.querySelectorAll('section.sae').forEach(function (section) {
    section.querySelectorAll('input').forEach(function (input) {
      input.addEventListener('input', function () { filter(section); });
    });
    filter(section);
  });
  document.body.setAttribute('data-ready', 'yes');
})();
"""

METRIC_COLUMNS = ("task", "kind", "accuracy_clip", "accuracy_sae", "dict_size", "l0", "mse",
                  "l1", "r2", "dead", "dense", "n")


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _num(x: Any, digits: int = 3) -> str:
    if x is None or x == "":
        return ""
    try:
        f = float(x)
    except (TypeError, ValueError):
        return _e(x)
    if math.isnan(f):
        return ""
    if f.is_integer() and abs(f) >= 1:
        return str(int(f))
    return f"{f:.{digits}g}" if abs(f) >= 1000 or (f and abs(f) < 1e-3) else f"{f:.{digits}f}"


def _metrics_table(metrics) -> str:
    head = "".join(f"<th>{_e(c)}</th>" for c in METRIC_COLUMNS)
    body = "".join("<tr>" + "".join(
        f'<td class="num">{_num(r[c])}</td>' if c not in ("task", "kind")
        else f"<td>{_e(r[c])}</td>" for c in METRIC_COLUMNS) + "</tr>"
        for _, r in metrics.iterrows())
    return (f'<table class="metrics sortable"><thead><tr>{head}</tr></thead>'
            f"<tbody>{body}</tbody></table>")


def _feature_rows(table, collage_paths: Mapping[int, str], languages: Sequence[str]) -> str:
    toy = "purity_of" in table.columns
    out = []
    for j, t in table.groupby("feature", sort=False):
        by = {r["language"]: r for _, r in t.iterrows()}
        first = t.iloc[0]
        aucs = [float(r["detection_auc"]) for r in by.values() if r["detection_auc"] != ""]
        best = max(aucs) if aucs else float("nan")
        cells = [f'<td><img class="collage" src="{_e(collage_paths[int(j)])}" '
                 f'alt="top images of feature {int(j)}" loading="lazy"></td>',
                 f'<td class="num">{int(j)}</td>',
                 f'<td class="num" data-value="{float(first["firing_rate"])}">'
                 f'{100 * float(first["firing_rate"]):.2f} %</td>']
        if toy:
            cells.append(f'<td data-value="{_e(first["purity"])}">{_e(first["purity_of"])} '
                         f'({_num(first["purity"], 2)})</td>')
        for lang in languages:
            r = by.get(lang)
            if r is None:
                cells += ["<td></td>", "<td></td>"]
                continue
            flags = "".join(f' <span class="flag">{_e(f)}</span>'
                            for f in str(r["flags"]).split(";") if f)
            if r.get("duplicate_of", "") not in ("", None):
                flags += f' <span class="flag">same as feature {_e(r["duplicate_of"])}</span>'
            named = ""
            if toy and str(r.get("names_value", "")) in ("True", "False"):
                ok = str(r["names_value"]) == "True"
                named = f' class="{"good" if ok else "bad"}" title="' + (
                    "names" if ok else "does not name") + f' {_e(first["purity_of"])}"'
            cells.append(f"<td{named}>{_e(r['text'])}{flags}</td>")
            cells.append(f'<td class="num" data-value="{_e(r["detection_auc"])}">'
                         f'{_num(r["detection_auc"], 2)}</td>')
        out.append(f'<tr data-auc="{best}">' + "".join(cells) + "</tr>")
    return "".join(out)


def _section(s: Mapping[str, Any]) -> str:
    summary, table = s["summary"], s["table"]
    languages = list(summary["languages"])
    toy = "purity_of" in table.columns
    baseline = summary.get("baseline")
    who = ('<span class="badge">offline baseline: the nearest text of a text set to each '
           'decoder direction, not a vision-language model</span>' if baseline
           else f"interpreter {_e(summary['interpreter'])}")
    stats = "; ".join(
        f"{_e(lang)}: median detection AUC {_num(st.get('auc_median'), 2)}"
        + (f", names the shared factor value in {100 * st['names_value']:.0f} %"
           if st.get("names_value") is not None else "")
        + f", {st['duplicates']} duplicates, "
          f"{sum(st.get(f, 0) for f in ('empty', 'too_long', 'language', 'cut'))} flagged"
        for lang, st in summary["stats"].items())
    head = ["collage", "feature", "firing"] + (["purity (toy factor)"] if toy else [])
    for lang in languages:
        head += [f"description ({lang})", f"AUC ({lang})"]
    th = "".join(f"<th>{_e(h)}</th>" for h in head)
    legend = ('<p><span class="good">green</span>: the description names the factor value '
              'shared by the most top images (purity); <span class="bad">red</span>: it does '
              'not.</p>' if toy else "")
    return f"""
<section class="sae" id="{_e(s['name'])}-{_e(s['dataset'])}">
<h2>SAE {_e(s['name'])} on {_e(s['dataset'])} ({_e(s['model'])})</h2>
<p>{who}. {stats}.</p>{legend}
{_metrics_table(s['metrics'])}
<div class="controls">filter <input class="filter" type="search" placeholder="text">
minimum AUC <input class="min-auc" type="number" min="0" max="1" step="0.05">
showing <span class="count"></span> of {table['feature'].nunique()} features</div>
<table class="features sortable"><thead><tr>{th}</tr></thead>
<tbody>{_feature_rows(table, s['collage_paths'], languages)}</tbody></table>
</section>"""


def render_report(sections: Sequence[Mapping[str, Any]], title: str = "cliplens study 002: "
                  "sparse autoencoder features") -> str:
    """The whole page for ``sections`` (see :func:`~.interpret_jobs.run_sae_report`)."""
    intro = ("Each row is one feature of a sparse autoencoder on CLIP image embeddings: the nine "
             "images that activate it most, how often it fires, and its descriptions. The "
             "detection AUC says how well the description's CLIP text embedding ranks the "
             "feature's top images above random ones (0.5 is chance). Click a header to sort.")
    body = "".join(_section(s) for s in sections)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{_e(title)}</title><style>{STYLE}</style></head>"
            f"<body><h1>{_e(title)}</h1><p>{_e(intro)}</p>{body}"
            f"<script>{SCRIPT}</script></body></html>\n")
