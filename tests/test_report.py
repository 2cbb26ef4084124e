"""The front door and the HTML report, checked in a real headless Chromium."""
import functools
import http.server
import json
import shutil
import subprocess
import threading

import matplotlib.image
import numpy as np
import pytest

from assignments.__main__ import main
from assignments.report import build_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
CHROME_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--hide-scrollbars"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two real quick runs, and the report built from them."""
    root = tmp_path_factory.mktemp("runs")
    assert main(["run", "regression", "--quick", "--out", str(root / "regression")]) == 0
    assert main(["run", "regularization", "--quick", "--out", str(root / "regularization")]) == 0
    build_report(root)
    return root


def test_list_names_every_available_driver(capsys):
    from assignments import available
    assert main(["list"]) == 0
    printed = capsys.readouterr().out
    for driver in available():
        assert driver.NAME in printed and driver.COURSE in printed


def test_unknown_driver_is_a_clear_error():
    with pytest.raises(SystemExit, match="unknown assignment 'nope'"):
        main(["run", "nope"])


def test_report_lists_each_run_with_its_figures(runs):
    page = (runs / "index.html").read_text()
    for name in ("regression", "regularization"):
        manifest = json.loads((runs / name / "manifest.json").read_text())
        assert f'id="{name}"' in page
        assert manifest["figures"], f"{name} declared no figures"
        for fig in manifest["figures"]:
            assert (runs / name / fig["file"]).stat().st_size > 1000
            assert f'src="{name}/{fig["file"]}"' in page


def test_report_without_runs_says_what_to_do(tmp_path):
    with pytest.raises(SystemExit, match="assignments run --default"):
        build_report(tmp_path / "missing")


@pytest.fixture(scope="module")
def served(runs):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(runs))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def _chromium(*args, timeout=60):
    return subprocess.run([CHROMIUM, *CHROME_FLAGS, *args], capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium installed (apt install chromium)")
def test_every_image_loads_in_chromium(runs, served, tmp_path):
    # A probe page, same origin as the report, reads the report's images after load.
    (runs / "probe.html").write_text("""<!doctype html><html><body>
<iframe id="r" src="index.html" style="width:1200px;height:800px"></iframe>
<script>
document.getElementById('r').onload = () => {
  const imgs = [...document.getElementById('r').contentDocument.images];
  const wait = imgs.map(i => i.complete ? Promise.resolve() : new Promise(ok => { i.onload = i.onerror = ok; }));
  Promise.all(wait).then(() => {
    const out = document.createElement('pre'); out.id = 'result';
    out.textContent = JSON.stringify(imgs.map(i => [i.getAttribute('src'), i.naturalWidth]));
    document.body.appendChild(out);
  });
};
</script></body></html>""")
    dom = _chromium("--virtual-time-budget=15000", "--dump-dom", f"{served}/probe.html").stdout
    assert '<pre id="result">' in dom, dom[-2000:]
    images = json.loads(dom.split('<pre id="result">')[1].split("</pre>")[0].replace("&quot;", '"'))
    assert len(images) >= 2
    broken = [src for src, width in images if width == 0]
    assert not broken, f"broken images in the report: {broken}"


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium installed (apt install chromium)")
def test_report_screenshot_is_not_blank(runs, served, tmp_path):
    shot = tmp_path / "report.png"
    _chromium(f"--screenshot={shot}", "--window-size=1280,1600", "--virtual-time-budget=10000",
              f"{served}/index.html")
    pixels = matplotlib.image.imread(shot)[..., :3]
    assert pixels.std() > 0.05  # text, figures and the navigation bar, not one flat colour
    assert len(np.unique((pixels * 255).astype(np.uint8).reshape(-1, 3), axis=0)) > 50
