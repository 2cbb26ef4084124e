"""Gather every run under ``runs/`` into one HTML page that opens from the file
system, offline, on a laptop, a phone or paper: an overview of every task's headline
result against its baseline, then a section per task with the exercise, its figures
with captions, its tables and its numbers. It reads only the files the runs wrote,
and the page needs no JavaScript.

``unsupported_numbers(run_dir)`` is the caption check: every number a figure caption
or a note quotes must be one the run measured or was set to."""
from __future__ import annotations

import datetime
import html
import json
import math
import re
from pathlib import Path

import numpy as np

from . import DRIVERS
from .runner import EMBEDDED
from minidl.fileio import write_atomic

STYLE = """
body { font-family: system-ui, sans-serif; margin: 0; color: #222; line-height: 1.5; }
nav { position: fixed; top: 0; left: 0; bottom: 0; width: 15rem; overflow-y: auto;
      background: #f4f4f6; border-right: 1px solid #ddd; padding: 1rem; box-sizing: border-box;
      font-size: .9rem; }
nav a { display: block; color: #224; text-decoration: none; padding: .15rem 0 .15rem .6rem; }
nav .course { display: block; font-weight: bold; margin-top: .6rem; }
nav a:hover { text-decoration: underline; }
main { margin-left: 15rem; padding: 1rem 2rem 4rem; max-width: 80rem; box-sizing: border-box; }
p, ul, .statement, figcaption, .offline { max-width: 48rem; overflow-wrap: break-word; }
section { border-top: 1px solid #ddd; padding-top: .5rem; margin-top: 2rem; }
h2 { margin-bottom: .2rem; }
.summary { margin-top: 0; font-style: italic; }
.meta { color: #555; font-size: .9em; }
.statement { background: #fafafa; border-left: 3px solid #88a; padding: .1rem 1rem; }
.offline { background: #fff6e0; border-left: 3px solid #c90; padding: .5rem 1rem; }
.offline code { white-space: nowrap; }  /* an option to copy, kept whole */
code { font-size: .92em; background: #f0f0f3; padding: 0 .2em; border-radius: 3px; }
figure { margin: 1.5rem 0; }
figure.table { margin: .5rem 0 1.2rem; }
figure.table figcaption { margin: 0 0 .3rem; color: #333; }
figure img { display: block; max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: .9rem; color: #444; margin-top: .3rem; }
.scroll { overflow-x: auto; max-width: 100%; }
table { border-collapse: collapse; font-size: .9rem; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #ccc; padding: .2rem .5rem; text-align: left; vertical-align: top; }
th { background: #eef; }
.num { text-align: right; white-space: nowrap; }
td.headline { min-width: 12rem; }
td.headline b { white-space: nowrap; }
.flag { color: #a30; font-weight: bold; }
.good { color: #262; }
.quick { color: #a60; font-weight: bold; }
@media (max-width: 50rem) {
  nav { position: static; width: auto; border-right: 0; border-bottom: 1px solid #ddd;
        white-space: nowrap; overflow-x: auto; padding: .5rem 1rem; }  /* one line to swipe */
  nav a, nav .course { display: inline-block; margin: 0 .8rem 0 0; padding: 0; }
  main { margin-left: 0; padding: 1rem; }
}
@media print {
  nav { display: none; }
  main { margin: 0; padding: 0; max-width: none; }
  .scroll { overflow: visible; }
  table { font-size: 8pt; }
  .num, .verdict { white-space: normal; }  /* wrap rather than run off the paper */
  figure, tr { break-inside: avoid; }
  a { color: inherit; text-decoration: none; }
}
"""
VERDICT_FLAGS = {"beats the baseline": ("good", "✓"), "within noise": ("flag", "≈"),
                 "does not beat the baseline": ("flag", "✗")}
esc = html.escape


# --------------------------------------------------------------- text
def render_inline(text):
    """One paragraph's reStructuredText-style markup as HTML: ``code`` and *emphasis*."""
    parts = re.split(r"``(.+?)``", text)  # odd items are code, left as they are
    out = []
    for i, part in enumerate(parts):
        if i % 2:
            out.append(f"<code>{esc(part)}</code>")
        else:
            out.append(re.sub(r"(?<![\w*])\*(\S(?:.*?\S)?)\*(?![\w*])", r"<em>\1</em>", esc(part)))
    return "".join(out)


def render_markup(text):
    """A statement as HTML paragraphs (blank lines between them)."""
    return "".join(f"<p>{render_inline(' '.join(p.split()))}</p>"
                   for p in re.split(r"\n\s*\n", text.strip()) if p.strip())


def _fmt(value):
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _column_format(values):
    """One precision for a column of numbers the driver gave no format for: integers
    as they are, else three significant digits of the smallest non-zero magnitude
    (at most 4 decimals), scientific where the numbers are tiny or huge."""
    numbers = [v for v in values if _is_number(v)]
    if all(isinstance(v, int) for v in numbers):
        return "{:d}"
    magnitudes = [abs(v) for v in numbers if v and math.isfinite(v)]
    if not magnitudes:
        return "{:.1f}"
    if min(magnitudes) < 1e-4 or max(magnitudes) >= 1e7:
        return "{:.2e}"
    return f"{{:.{min(4, max(0, 2 - math.floor(math.log10(min(magnitudes)))))}f}}"


def _cell(value, fmt):
    if value is None:
        return ""
    if fmt and _is_number(value):
        try:
            return fmt.format(value)
        except (ValueError, TypeError):
            pass
    return _fmt(value)


def _table_html(rows, caption, columns=None):
    """``columns``: the driver's [{key, label, format}], else every key under its name.
    Numbers are right-aligned; a table wider than the page scrolls inside its own box."""
    columns = columns or [{"key": k, "label": k, "format": None}
                          for k in dict.fromkeys(k for row in rows for k in row)]
    head, formats = [], []
    for c in columns:
        numbers = [row[c["key"]] for row in rows if _is_number(row.get(c["key"]))]
        formats.append(c.get("format") or (_column_format(numbers) if numbers else None))
        head.append(f'<th{" class=num" if numbers else ""}>{esc(c["label"])}</th>')
    body = "".join(
        "<tr>" + "".join(f'<td{" class=num" if _is_number(row.get(c["key"])) else ""}>'
                         f'{esc(_cell(row.get(c["key"]), f))}</td>' for c, f in zip(columns, formats))
        + "</tr>" for row in rows)
    return _captioned_table(render_inline(caption), f'<thead><tr>{"".join(head)}</tr></thead><tbody>{body}</tbody>')


def _captioned_table(caption, content, table_id=None):
    """A table under its caption (a figure's, so that a long one wraps on a narrow screen
    while the table scrolls inside its own box)."""
    attribute = f' id="{table_id}"' if table_id else ""
    return (f'<figure class="table"><figcaption>{caption}</figcaption>'
            f'<div class="scroll"><table{attribute}>{content}</table></div></figure>')


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


# ------------------------------------------------------------- one run
def _datasets(manifest):
    """The driver's --dataset choices: from the manifest, or (older runs) the driver."""
    if isinstance(manifest.get("datasets"), list):
        return manifest["datasets"]
    from . import get
    try:
        return list(get(manifest["name"]).DATASETS)
    except (SystemExit, ImportError):  # a driver no longer in the kit, or its extra missing
        return [manifest["dataset"]]


def _stand_in_for(manifest):
    """The course's real datasets this run stood in for with embedded data, or []."""
    if manifest["dataset"] not in EMBEDDED:
        return []
    return [d for d in _datasets(manifest) if d not in EMBEDDED]


def _dataset_cell(manifest):
    real = _stand_in_for(manifest)
    name = f"<code>{esc(manifest['dataset'])}</code>"
    if real:
        return f"{name}, offline stand-in for {', '.join(f'<code>{esc(d)}</code>' for d in real)}"
    if manifest["dataset"] in EMBEDDED:
        return f"{name} (embedded; the task's own data)"
    return f"{name} (real data)"


def _offline_note(manifest):
    real = _stand_in_for(manifest)
    if not real:
        return ""
    options = " or ".join(f"<code>--dataset {esc(d)}</code>" for d in real)
    return (f'<p class="offline"><b>Offline data.</b> This run used <code>{esc(manifest["dataset"])}</code>, '
            f"a small dataset embedded in the kit, in place of the course's real data; where the "
            f"statement names a dataset and its sizes, they are the real one's, not this run's. "
            f"{options} runs the task on the real data.</p>")


def _value(value, unit):
    if unit == "%":
        return f"{100 * value:.1f} %"
    return f"{value:.3g}" + (f" {unit}" if unit else "")


def _noise(noise, unit):
    """A difference of percentages is in points."""
    return f"± {100 * noise:.1f} points" if unit == "%" else f"± {_value(noise, unit)}"


def _headline_text(headline):
    """"label VALUE against baseline_label VALUE" of a run's headline, or a dash."""
    if not headline:
        return "—"
    unit = headline.get("unit", "%")
    return (f"{esc(headline['label'])} <b>{_value(headline['value'], unit)}</b> against "
            f"{esc(headline['baseline_label'])} <b>{_value(headline['baseline'], unit)}</b>")


def _noise_text(headline):
    if not headline or headline.get("noise") is None:
        return "—"
    return _noise(headline["noise"], headline.get("unit", "%"))


def _verdict(headline):
    if not headline:
        return "—"
    kind, mark = VERDICT_FLAGS[headline["verdict"]]
    return f'<span class="{kind}">{mark} {esc(headline["verdict"])}</span>'


def _nav(runs):
    """Links to every section, under each course's name."""
    courses = {}
    for _, manifest, _ in runs:
        courses.setdefault(manifest["course"], []).append(
            f'<a href="#{esc(manifest["name"])}">{esc(manifest["task"])}</a>')
    return "".join(f'<span class="course">{esc(course)}</span>{"".join(links)}'
                   for course, links in courses.items())


def _title(manifest):
    return f"{manifest['course']}, {manifest['task']}"


def _run_time(manifest, between=" "):
    cpu = manifest.get("cpu_seconds")
    return f"{manifest['seconds']:.1f} s" + (f"{between}(CPU {cpu:.1f} s)" if cpu is not None else "")


def _png_size(path):
    """(width, height) of a PNG from its header, or None."""
    try:
        with open(path, "rb") as f:
            head = f.read(24)
    except OSError:
        return None
    if head[:8] != b"\x89PNG\r\n\x1a\n":
        return None
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def _figure_html(run_dir, fig):
    src = esc(f"{run_dir.name}/{fig['file']}")
    size = _png_size(run_dir / fig["file"])
    dims = f' width="{size[0]}" height="{size[1]}"' if size else ""
    return (f'<figure><a href="{src}" title="the figure at full resolution">'
            f'<img src="{src}"{dims} alt="{esc(fig["caption"])}"></a>'
            f'<figcaption>{render_inline(fig["caption"])}</figcaption></figure>')


def _section(run_dir, manifest, metrics):
    name = manifest["name"]
    meta = (f'driver <code>{esc(name)}</code> &middot; dataset {_dataset_cell(manifest)} &middot; '
            f"{_run_time(manifest)}"
            + (' &middot; <span class="quick">quick profile</span>' if manifest.get("quick") else ""))
    parts = [f'<section id="{esc(name)}"><h2>{esc(_title(manifest))}</h2>']
    if manifest.get("summary"):
        parts.append(f'<p class="summary">{render_inline(manifest["summary"])}</p>')
    parts += [f'<p class="meta">{meta}</p>', _offline_note(manifest),
              f'<div class="statement">{render_markup(manifest["statement"])}</div>']
    headline = manifest.get("headline")
    if headline:
        noise = f" (noise {_noise_text(headline)})" if headline.get("noise") is not None else ""
        parts.append(f"<p><b>Headline.</b> {_headline_text(headline)}{noise}: {_verdict(headline)}.</p>")
    parts += [f"<p>{render_inline(note)}</p>" for note in manifest.get("notes", [])]
    parts += [_figure_html(run_dir, fig) for fig in manifest.get("figures", [])]
    parts += [_table_html(t["rows"], t["caption"], t.get("columns")) if t["rows"] else
              f"<p>{render_inline(t['caption'])}: (empty table)</p>" for t in manifest.get("tables", [])]
    flat = _flatten(metrics)
    if flat:
        rows = "".join(f'<tr><td>{esc(k)}</td><td{" class=num" if _is_number(v) else ""}>{esc(_fmt(v))}</td></tr>'
                       for k, v in flat)
        parts.append('<details><summary>All numbers (metrics.json)</summary><div class="scroll"><table>'
                     f"<thead><tr><th>metric</th><th>value</th></tr></thead><tbody>{rows}</tbody>"
                     "</table></div></details>")
    parts.append("</section>")
    return "\n".join(p for p in parts if p)


def _overview(runs):
    """One row per run: the task, its data, its headline beside the baseline, the flag."""
    head = ("task", "verdict", "headline result", "noise (1 SE)", "dataset", "run time")
    rows = []
    for _, manifest, _ in runs:
        headline = manifest.get("headline")
        task = (f'<a href="#{esc(manifest["name"])}">{esc(_title(manifest))}</a> '
                f'<span class="meta">({esc(manifest["name"])})</span>')
        # the verdict beside the task: what a phone shows before the table scrolls
        rows.append(f'<tr id="overview-{esc(manifest["name"])}"><td>{task}</td>'
                    f'<td class="verdict">{_verdict(headline)}</td><td class="headline">{_headline_text(headline)}</td>'
                    f'<td class="num">{_noise_text(headline)}</td><td>{_dataset_cell(manifest)}</td>'
                    f'<td class="num">{_run_time(manifest, "<br>")}</td></tr>')
    header = "".join(f"<th>{h}</th>" for h in head)
    caption = ("<b>Overview.</b> Every task's headline result beside the baseline it must beat. Noise "
               "is one standard error of the difference (a seed spread or the binomial error of the "
               "test set); a difference within two of them is flagged &asymp;, a result that does not "
               "beat its baseline &#x2717;. Run time: wall clock, and CPU time of the process where "
               "recorded.")
    return _captioned_table(caption, f"<thead><tr>{header}</tr></thead><tbody>{''.join(rows)}</tbody>",
                            "overview")


# ------------------------------------------------------------ loading
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
    if not all(_is_number(manifest.get(k, 0)) for k in ("seconds", "cpu_seconds")):
        return "has a non-number seconds or cpu_seconds"
    for key, fields in (("figures", ("file", "caption")), ("tables", ("caption", "rows")),
                        ("notes", ())):
        entries = manifest.get(key, [])
        if not isinstance(entries, list) or not all(
                isinstance(e, str) if not fields else isinstance(e, dict) and all(f in e for f in fields)
                for e in entries):
            return f"has malformed {key}"
    headline = manifest.get("headline")
    if headline is not None and not (
            isinstance(headline, dict) and headline.get("verdict") in VERDICT_FLAGS
            and all(_is_number(headline.get(k)) for k in ("value", "baseline"))
            and (headline.get("noise") is None or _is_number(headline["noise"]))
            and all(isinstance(headline.get(k), str) for k in ("label", "baseline_label"))):
        return "has a malformed headline"
    datasets = manifest.get("datasets", [])
    if not isinstance(datasets, list) or not all(isinstance(d, str) for d in datasets):
        return "has malformed datasets"
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
    nav = _nav(runs)
    sections = "\n".join(_section(d, m, x) for d, m, x in runs)
    stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Deep-learning lab kit: results</title><style>{STYLE}</style></head>
<body><nav><a href="#top" class="course">Overview</a>{nav}</nav>
<main id="top"><h1>Deep-learning lab kit: results</h1>
<p class="meta">Generated {stamp} from the runs in <code>{esc(str(runs_dir))}</code>.
Each section states the exercise, shows the figures the driver made (click one for its full
resolution) and the numbers it measured.</p>
{_overview(runs)}
{sections}
</main></body></html>
"""
    path = runs_dir / "index.html"
    write_atomic(path, page)
    return path


# ------------------------------------------------------ caption check
# A number in running text: not part of a name (CIFAR-10, conv1, top-5, 32x32, 1-10-1, ViT-B/32),
# with thousands separators (1,249), decimals and exponents (1e-4); a % after it.
_NUMBER = re.compile(r"(?<![\w.\-−])(?<![A-Za-z]/)([-−]?)(\d{1,3}(?:,\d{3})+(?!\d)|\d+)(\.\d+)?([eE][-+]?\d+)?"
                     r"(?![\w]|[-.]\d|-\w)(\s?%)?")
SMALL_INTEGERS = 10  # "3 of 3 regularisers", "one of 5 seeds": counts of the figure's own panels


def quoted_numbers(text):
    """The numbers ``text`` quotes: (as written, value, decimal places shown: 2 for 0.25
    and for 2.5e-1, 7 for 4e-07)."""
    found = []
    for match in _NUMBER.finditer(text):
        sign, whole, decimals, exponent, _ = match.groups()
        written = match.group(0).strip()
        value = float(f"{'-' if sign else ''}{whole.replace(',', '')}{decimals or ''}{exponent or ''}")
        shown = (len(decimals) - 1 if decimals else 0) - (int(exponent[1:]) if exponent else 0)
        found.append((written, value, shown))
    return found


def _numbers_in(value, into):
    """Every number in a JSON value, and the length of each list (a count)."""
    if _is_number(value):
        into.append(float(value))
    elif isinstance(value, dict):
        for v in value.values():
            _numbers_in(v, into)
    elif isinstance(value, list):
        into.append(float(len(value)))
        for v in value:
            _numbers_in(v, into)
    elif isinstance(value, str):
        into += [n[1] for n in quoted_numbers(value)]  # "8x8", "0.001" kept as text
    return into


def _supported(value, shown, known):
    """Whether a number written with ``shown`` decimal places is one of ``known`` rounded
    so (or, as a percentage, one of them times 100)."""
    half = 0.5 * 10 ** -shown * (1 + 1e-9) + 1e-12
    # the sign may be in the words ("falls by 0.3"), and a share may be written as a percentage
    return any(np.any(np.abs(np.abs(known * scale) - abs(value)) <= half) for scale in (1.0, 100.0))


def unsupported_numbers(run_dir):
    """The numbers that a run's figure captions and notes quote but that are in none of
    its metrics.json, tables (cells and row counts), config.json or headline, allowing
    the rounding shown, percentages of fractions, one minus a fraction (an error rate)
    and the difference of two numbers the same text quotes ("27.5% against 26.2%: -1.3
    points"). Integers up to SMALL_INTEGERS are not checked. Returns lines such as
    ``"figure dropout.png: 0.7 %"``."""
    run_dir = Path(run_dir)
    manifest = json.loads((run_dir / "manifest.json").read_text(encoding="utf-8"))
    sources = [json.loads((run_dir / name).read_text(encoding="utf-8"))
               for name in ("metrics.json", "config.json") if (run_dir / name).exists()]
    sources += [[t["rows"] for t in manifest.get("tables", [])], manifest.get("headline") or {}]
    known = []
    for source in sources:
        _numbers_in(source, known)
    known = np.array(known)
    shares = known[(known >= 0) & (known <= 1)]
    known = np.unique(np.concatenate([known, 1 - shares]))  # an error rate is one minus an accuracy
    texts = [(f"figure {f['file']}", f["caption"]) for f in manifest.get("figures", [])]
    texts += [(f"note {i + 1}", note) for i, note in enumerate(manifest.get("notes", []))]
    problems = []
    for where, text in texts:
        numbers = [(n, _supported(n[1], n[2], known)) for n in quoted_numbers(text)]
        measured = np.array([value for (_, value, _), ok in numbers if ok and value != 0])
        differences = np.abs(measured[:, None] - measured[None, :]).ravel()
        for (written, value, shown), ok in numbers:
            if not (ok or shown == 0 and value.is_integer() and abs(value) <= SMALL_INTEGERS
                    or _supported(value, shown, differences[differences > 0])):
                problems.append(f"{where}: {written}")
    return problems
