"""The front door and the HTML report, checked in a real headless Chromium at a desktop
and a phone width."""
import ast
import functools
import http.server
import json
import re
import shutil
import subprocess
import threading
from pathlib import Path
from types import SimpleNamespace

import matplotlib.image
import matplotlib.pyplot as plt
import numpy as np
import pytest

from assignments.__main__ import main
from assignments.report import build_report, quoted_numbers, render_markup, unsupported_numbers
from assignments.runner import binomial_se, run_driver

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
CHROME_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--hide-scrollbars"]
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium installed (apt install chromium)")
WIDTHS = (1280, 400)  # a laptop, a phone


def _small_run(ctx):
    """A wide figure, a table, a headline inside its noise and one note quoting a number
    that the run never measured."""
    fig, ax = plt.subplots(figsize=(22, 3))  # 2,000 px and more: wider than any text column
    ax.bar(["baseline", "model"], [0.90, 0.91])
    ax.set(title="Test accuracy", xlabel="model", ylabel="accuracy")
    ctx.save_figure(fig, "wide", caption="Test accuracy: 91.0 % against 90.0 % for the baseline, "
                                         "on 360 test images.")
    ctx.table("scores", [{"model": "baseline", "accuracy": 0.9, "loss": 0.31234},
                         {"model": "model", "accuracy": 0.91, "loss": 0.2}],
              "The ``scores`` of both models", columns={"model": "model", "accuracy": ("acc (%)", "{:.1%}"),
                                                       "loss": "loss"})
    ctx.headline("test accuracy", 0.91, 0.90, "the baseline", noise=binomial_se(0.9, 360) * 2 ** 0.5)
    ctx.note("The model reaches 93.5 % on the test set.")  # made up: the caption check must find it
    return {"accuracy": 0.91, "baseline_accuracy": 0.90, "test_images": 360}


SMALL_DRIVER = SimpleNamespace(
    NAME="small_check", COURSE="Test course", TASK="week 0, task 1", SUMMARY="a run within its noise",
    STATEMENT="Train on ``cifar10`` with 45,000 training images and *compare* both models.\n\n"
              "A second paragraph.", DATASETS=("digits", "cifar10"), PROFILES={"default": {}}, run=_small_run)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two real quick runs, a small run within its noise, and the report built from them."""
    root = tmp_path_factory.mktemp("runs")
    assert main(["run", "regression", "--quick", "--out", str(root / "regression")]) == 0
    assert main(["run", "regularization", "--quick", "--out", str(root / "regularization")]) == 0
    run_driver(SMALL_DRIVER, {"out": str(root / "small_check")})
    build_report(root)
    return root


@pytest.fixture(scope="module")
def page(runs):
    return (runs / "index.html").read_text()


def test_list_names_every_available_driver(capsys):
    from assignments import available
    assert main(["list"]) == 0
    printed = capsys.readouterr().out
    for driver in available():
        assert driver.NAME in printed and driver.COURSE in printed


def test_unknown_driver_is_a_clear_error():
    with pytest.raises(SystemExit, match="unknown assignment 'nope'"):
        main(["run", "nope"])


def test_report_lists_each_run_with_its_figures_linked(runs, page):
    for name in ("regression", "regularization", "small_check"):
        manifest = json.loads((runs / name / "manifest.json").read_text())
        assert f'id="{name}"' in page
        assert f"<h2>{manifest['course']}, {manifest['task']}</h2>" in page  # named by task, not folder
        assert manifest["figures"], f"{name} declared no figures"
        for fig in manifest["figures"]:
            assert (runs / name / fig["file"]).stat().st_size > 1000
            assert f'<a href="{name}/{fig["file"]}" title="the figure at full resolution"><img src="{name}/{fig["file"]}"' in page


def test_report_without_runs_says_what_to_do(tmp_path):
    with pytest.raises(SystemExit, match="assignments run --default"):
        build_report(tmp_path / "missing")


def test_statement_markup_is_rendered():
    assert render_markup("Use ``x.shape`` and *not* 2 * 3, a*b.\n\nNext.") == (
        "<p>Use <code>x.shape</code> and <em>not</em> 2 * 3, a*b.</p><p>Next.</p>")
    assert render_markup("``a < b`` & <i>") == "<p><code>a &lt; b</code> &amp; &lt;i&gt;</p>"
    for path in sorted(Path("assignments").glob("*.py")):  # every driver's, read as a literal
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "STATEMENT":
                shown = render_markup(ast.literal_eval(node.value))
                assert "``" not in shown and not re.search(r"(?<![\w\s])\*\w", shown), (path, shown)


def test_offline_stand_ins_are_said_and_the_real_data_named(page):
    sections = dict(re.findall(r'<section id="(\w+)">(.*?)</section>', page, re.S))
    assert '<p class="offline">' in sections["small_check"] and "--dataset cifar10" in sections["small_check"]
    assert "<code>--dataset mnist</code> or <code>--dataset fashion_mnist</code>" in sections["regularization"]
    assert 'class="offline"' not in sections["regression"]  # toy is the task's own data
    assert "<code>cifar10</code> with 45,000" in sections["small_check"]  # the statement's markup


def test_overview_has_a_row_per_run_and_flags_a_result_within_noise(runs, page):
    overview = page.split('<table id="overview">')[1].split("</table>")[0]
    rows = dict(re.findall(r'<tr id="overview-(\w+)">(.*?)</tr>', overview, re.S))
    assert set(rows) == {"regression", "regularization", "small_check"}
    assert '<span class="flag">≈ within noise</span>' in rows["small_check"]
    assert "test accuracy <b>91.0 %</b> against the baseline <b>90.0 %</b>" in rows["small_check"]
    assert "± 2.2 points" in rows["small_check"]  # sqrt(0.9 * 0.1 / 360) * sqrt(2) = 2.24 points
    cpu = json.loads((runs / "small_check" / "manifest.json").read_text())["cpu_seconds"]
    assert f"(CPU {cpu:.1f} s)" in rows["small_check"]
    for name in ("regression", "regularization"):
        headline = json.loads((runs / name / "manifest.json").read_text())["headline"]
        if headline is None:  # the driver does not declare one yet: a dash, no flag
            assert "—" in rows[name] and "flag" not in rows[name]
        else:
            assert headline["verdict"] in rows[name]


def test_tables_have_captions_right_aligned_numbers_and_one_precision_per_column(page):
    section = page.split('<section id="small_check">')[1].split("</section>")[0]
    table = section.split('<figure class="table">')[1].split("</figure>")[0]
    assert "<figcaption>The <code>scores</code> of both models</figcaption>" in table
    cells = re.findall(r"<td( class=num)?>([^<]*)</td>", table)
    assert cells == [("", "baseline"), (" class=num", "90.0%"), (" class=num", "0.312"),
                     ("", "model"), (" class=num", "91.0%"), (" class=num", "0.200")]


def test_caption_numbers_are_checked_against_what_the_run_measured(runs):
    assert [(w, v, d) for w, v, d in quoted_numbers("CIFAR-10 at 32x32: 96.7 % of 1,249, 4e-07, conv1")] == [
        ("96.7 %", 96.7, 1), ("1,249", 1249.0, 0), ("4e-07", 4e-07, 7)]
    assert [w for w, _, _ in quoted_numbers("ViT-B/32 at eps = 8/255")] == ["8", "255"]  # a model's name is no number
    assert unsupported_numbers(runs / "small_check") == ["note 1: 93.5 %"]
    for name in ("regression", "regularization"):
        unknown = unsupported_numbers(runs / name)
        assert not unknown, f"{name} quotes numbers it did not record: {unknown}"


# ------------------------------------------------------------ in Chromium
@pytest.fixture(scope="module")
def served(runs):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(runs))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def _chromium(*args, timeout=90):
    return subprocess.run([CHROMIUM, *CHROME_FLAGS, *args], capture_output=True, text=True,
                          timeout=timeout)


# A probe page, same origin as the report, holds it in one frame per width (media queries
# answer to the frame's width) and writes what it measured into its own DOM for --dump-dom.
PROBE = """<!doctype html><html><body>
FRAMES
<script>
function measure(frame) {
  const doc = frame.contentDocument, win = frame.contentWindow;
  const box = e => e.getBoundingClientRect();
  return {
    width: win.innerWidth, scroll_width: doc.documentElement.scrollWidth,
    main_width: box(doc.querySelector('main')).width,
    nav_position: win.getComputedStyle(doc.querySelector('nav')).position,
    images: [...doc.images].map(i => ({src: i.getAttribute('src'), natural: i.naturalWidth,
      shown: box(i).width, room: box(i.closest('figure')).width, link: i.parentElement.getAttribute('href')})),
    boxes_inside: [...doc.querySelectorAll('.scroll, figure, p')].every(e => box(e).right <= win.innerWidth + 1),
    numbers_right: [...doc.querySelectorAll('td.num')].map(td => win.getComputedStyle(td).textAlign),
  };
}
const frames = [...document.querySelectorAll('iframe')];
Promise.all(frames.map(f => new Promise(ok => { f.onload = ok; }))).then(() => {
  const images = frames.flatMap(f => [...f.contentDocument.images]);
  return Promise.all(images.map(i => i.complete ? 0 : new Promise(ok => { i.onload = i.onerror = ok; })));
}).then(() => {
  const out = document.createElement('pre'); out.id = 'result';
  out.textContent = JSON.stringify(frames.map(measure));
  document.body.appendChild(out);
});
</script></body></html>"""


@pytest.fixture(scope="module")
def measured(runs, served):
    frames = "".join(f'<iframe src="index.html" style="width:{w}px;height:900px;border:0"></iframe>'
                     for w in WIDTHS)
    (runs / "probe.html").write_text(PROBE.replace("FRAMES", frames))
    dom = _chromium("--window-size=1800,1000", "--virtual-time-budget=20000", "--dump-dom",
                    f"{served}/probe.html").stdout
    assert '<pre id="result">' in dom, dom[-2000:]
    found = json.loads(dom.split('<pre id="result">')[1].split("</pre>")[0].replace("&quot;", '"')
                       .replace("&amp;", "&"))
    return dict(zip(WIDTHS, found))


@needs_chromium
@pytest.mark.parametrize("width", WIDTHS)
def test_the_page_fits_the_screen_and_every_image_loads(measured, width):
    page = measured[width]
    assert page["width"] == width
    assert page["scroll_width"] <= width, f"the page scrolls sideways at {width} px: {page['scroll_width']} px"
    assert page["boxes_inside"], f"a paragraph, figure or table box sticks out at {width} px"
    assert page["main_width"] >= (360 if width == 400 else 900), page["main_width"]
    assert page["nav_position"] == ("fixed" if width == 1280 else "static")  # a sidebar, then a strip
    assert len(page["images"]) >= 3
    assert not [i["src"] for i in page["images"] if i["natural"] == 0], "broken images"
    for image in page["images"]:  # shown as large as the column allows, never capped lower
        assert image["shown"] >= min(image["natural"], image["room"]) - 2, image
        assert image["link"] == image["src"]
    assert page["numbers_right"] and set(page["numbers_right"]) == {"right"}


@needs_chromium
@pytest.mark.parametrize("width", WIDTHS)
def test_report_screenshot_is_not_blank(served, tmp_path, width):
    shot = tmp_path / f"report_{width}.png"
    _chromium(f"--screenshot={shot}", f"--window-size={width},1600", "--virtual-time-budget=10000",
              f"{served}/index.html")
    pixels = matplotlib.image.imread(shot)[..., :3]
    assert pixels.shape[1] == width
    assert pixels.std() > 0.05  # text, figures and the navigation, not one flat colour
    assert len(np.unique((pixels * 255).astype(np.uint8).reshape(-1, 3), axis=0)) > 50


def test_a_tampered_headline_skips_the_run_with_a_line(runs, tmp_path, capsys):
    for name in ("small_check", "regression"):
        shutil.copytree(runs / name, tmp_path / name)
    manifest = json.loads((tmp_path / "small_check" / "manifest.json").read_text())
    manifest["headline"]["verdict"] = "excellent"
    (tmp_path / "small_check" / "manifest.json").write_text(json.dumps(manifest))
    page = build_report(tmp_path).read_text()
    assert 'id="regression"' in page and 'id="small_check"' not in page
    assert f"skipping {tmp_path / 'small_check'} (its manifest.json has a malformed headline)" in capsys.readouterr().out
