"""Gather every run under ``runs/`` into one HTML page that opens from the file
system, offline: a section per driver with the exercise, its figures with captions,
its tables and its headline numbers. It reads only the files the runs wrote."""
from __future__ import annotations

import datetime
import html
import json
from pathlib import Path

from . import DRIVERS
from minidl.fileio import write_atomic

STYLE = """
body { font-family: system-ui, sans-serif; margin: 0; color: #222; line-height: 1.45; }
nav { position: fixed; top: 0; left: 0; bottom: 0; width: 15rem; overflow-y: auto;
      background: #f4f4f6; border-right: 1px solid #ddd; padding: 1rem; box-sizing: border-box; }
nav a { display: block; color: #224; text-decoration: none; padding: .15rem 0; }
nav a:hover { text-decoration: underline; }
main { margin-left: 16rem; padding: 1rem 2rem 4rem; max-width: 70rem; }
section { border-bottom: 1px solid #ddd; padding-bottom: 1.5rem; margin-bottom: 1.5rem; }
.meta { color: #666; font-size: .9rem; }
.statement { background: #fafafa; border-left: 3px solid #88a; padding: .5rem 1rem; }
figure { display: inline-block; margin: .5rem 1rem .5rem 0; max-width: 100%; vertical-align: top; }
figure img { max-width: 100%; max-height: 34rem; border: 1px solid #eee; }
figcaption { font-size: .9rem; color: #444; max-width: 40rem; }
table { border-collapse: collapse; margin: .5rem 0 1rem; font-size: .9rem; }
th, td { border: 1px solid #ccc; padding: .2rem .5rem; text-align: left; }
th { background: #eef; }
.quick { color: #a60; font-weight: bold; }
"""


def _flatten(metrics, prefix=""):
    """Scalar metrics as (dotted key, value) rows; long lists are left to the figures."""
    rows = []
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            rows += _flatten(value, name + ".")
        elif isinstance(value, (int, float, str, bool)) or value is None:
            rows.append((name, value))
        elif isinstance(value, list) and len(value) <= 10 and all(
                isinstance(v, (int, float, str)) for v in value):
            rows.append((name, ", ".join(_fmt(v) for v in value)))
    return rows


def _fmt(value):
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _cell(value, fmt):
    if value is None:
        return ""
    if fmt and isinstance(value, (int, float)) and not isinstance(value, bool):
        return fmt.format(value)
    return _fmt(value)


def _table_html(rows, columns=None):
    """``columns``: the driver's [{key, label, format}], else every key under its name."""
    if not rows:
        return "<p>(empty table)</p>"
    columns = columns or [{"key": k, "label": k, "format": None}
                          for k in dict.fromkeys(k for row in rows for k in row)]
    head = "".join(f"<th>{html.escape(c['label'])}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_cell(row.get(c['key']), c['format']))}</td>"
                         for c in columns) + "</tr>"
        for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _section(run_dir, manifest, metrics):
    name = manifest["name"]
    esc = html.escape
    parts = [f'<section id="{esc(name)}"><h2>{esc(name)}</h2>',
             f'<p class="meta">{esc(manifest["course"])}, {esc(manifest["task"])} &middot; '
             f'dataset <b>{esc(manifest["dataset"])}</b> &middot; {manifest["seconds"]} s'
             + (' &middot; <span class="quick">quick profile</span>' if manifest.get("quick") else "")
             + "</p>",
             f'<div class="statement"><p>{esc(manifest["statement"])}</p></div>']
    for note in manifest.get("notes", []):
        parts.append(f"<p>{esc(note)}</p>")
    for fig in manifest.get("figures", []):
        src = f"{run_dir.name}/{fig['file']}"
        parts.append(f'<figure><img src="{esc(src)}" alt="{esc(fig["caption"])}">'
                     f'<figcaption>{esc(fig["caption"])}</figcaption></figure>')
    for table in manifest.get("tables", []):
        parts.append(f"<h3>{esc(table['caption'])}</h3>{_table_html(table['rows'], table.get('columns'))}")
    flat = _flatten(metrics)
    if flat:
        rows = "".join(f"<tr><td>{esc(k)}</td><td>{esc(_fmt(v))}</td></tr>" for k, v in flat)
        parts.append(f"<details><summary>All numbers (metrics.json)</summary>"
                     f"<table><tr><th>metric</th><th>value</th></tr>{rows}</table></details>")
    parts.append("</section>")
    return "\n".join(parts)


_MANIFEST_TEXT = ("name", "course", "task", "dataset", "statement")


def _manifest_fault(manifest):
    """What makes a manifest.json unusable (edited by hand, another tool's), or None."""
    if not isinstance(manifest, dict):
        return f"is a JSON {type(manifest).__name__}, not an object"
    missing = [k for k in (*_MANIFEST_TEXT, "seconds") if k not in manifest]
    if missing:
        return f"has no {', '.join(missing)}"
    if not all(isinstance(manifest[k], str) for k in _MANIFEST_TEXT):
        return "has a non-text name, course, task, dataset or statement"
    if not isinstance(manifest["seconds"], (int, float)):
        return "has a non-number seconds"
    for key, fields in (("figures", ("file", "caption")), ("tables", ("caption", "rows")),
                        ("notes", ())):
        entries = manifest.get(key, [])
        if not isinstance(entries, list) or not all(
                isinstance(e, str) if not fields else isinstance(e, dict) and all(f in e for f in fields)
                for e in entries):
            return f"has malformed {key}"
    return None


def _load_runs(runs_dir):
    runs = []
    for manifest_path in runs_dir.glob("*/manifest.json"):
        run_dir = manifest_path.parent
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
            metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as error:
            print(f"report: skipping {run_dir} ({error})")
            continue
        fault = _manifest_fault(manifest)
        if fault:
            print(f"report: skipping {run_dir} (its manifest.json {fault})")
            continue
        runs.append((run_dir, manifest, metrics))
    order = {name: i for i, name in enumerate(DRIVERS)}
    runs.sort(key=lambda r: (order.get(r[1]["name"], len(order)), r[1]["name"]))
    return runs


def build_report(runs_dir=Path("runs")):
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise SystemExit(f"no runs found: {runs_dir.resolve()} does not exist; "
                         "run `python -m assignments run --default` first")
    runs = _load_runs(runs_dir)
    if not runs:
        raise SystemExit(f"no runs found in {runs_dir.resolve()}; "
                         "run `python -m assignments run --default` first")
    nav = "".join(f'<a href="#{html.escape(m["name"])}">{html.escape(m["name"])}</a>'
                  for _, m, _ in runs)
    sections = "\n".join(_section(d, m, x) for d, m, x in runs)
    stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>Deep-learning lab kit: results</title><style>{STYLE}</style></head>
<body><nav><b>Assignments</b>{nav}</nav>
<main><h1>Deep-learning lab kit: results</h1>
<p class="meta">Generated {stamp} from the runs in <code>{html.escape(str(runs_dir))}</code>.
Each section states the exercise, shows the figures the driver made and the numbers it measured.</p>
{sections}
</main></body></html>
"""
    path = runs_dir / "index.html"
    write_atomic(path, page)
    return path
