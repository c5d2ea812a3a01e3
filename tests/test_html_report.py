"""`report --html`: one self-contained page with every table the terminal prints, the charts
(points with CI whiskers, nothing clipped), the runs and the environment. Fast tests read the
HTML with html.parser; the slow one loads it in headless Chromium (.ci/setup/chromium.sh)."""
from __future__ import annotations

import base64
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from bench.cli import main
from bench.config import load_experiment
from bench.report import analyse, collect
from bench.report.plots import ablation_figure, costs_figure, shares_figure
from bench.store import RunDir

ROOT = Path(__file__).resolve().parents[1]
SEEDS = [0, 1, 2]
ACC = {"conv": [0.71, 0.745, 0.698], "sa": [0.20, 0.95, 0.60], "dynamic": [0.79, 0.81, 0.80]}
ENV = {"torch": "2.x", "lightning": "2.x", "python": "3.11", "threads": 2, "device": "test-cpu"}


@pytest.fixture
def stored(tiny_experiment, tmp_path):
    """A planted store: three strategies x three seeds done (sa's spread is wide, so its whisker
    reaches far), plus one failed run."""
    path = tiny_experiment(matrix={"model.fusion": ["conv", "sa", "dynamic", "unary"],
                                   "seed": SEEDS})
    results = tmp_path / "results"
    for run in load_experiment(path).runs:
        fusion, seed = run.config["model"]["fusion"], run.config["seed"]
        rd = RunDir(results / "tiny" / run.id)
        rd.create(run.config)
        if fusion == "unary":
            if seed == 0:
                rd.update_status(state="failed", error="Diverged: loss is nan at epoch 2")
            continue
        shares = None if fusion == "conv" else {"unary": 60.0 + seed, "binary": 40.0 - seed}
        init = None if fusion == "conv" else {"unary": 55.0, "binary": 45.0}
        rd.write_metrics({"test": {"test/acc1": ACC[fusion][seed]},
                          "costs": {"params": 1000 + len(fusion), "gflops": 0.01 * len(fusion),
                                    "train_images_per_s": 500 - 10 * len(fusion)},
                          "shares": shares, "shares_init": init, "environment": ENV})
        rd.update_status(state="done", elapsed_s=12.0)
    return path, results


class Page(HTMLParser):
    def __init__(self, text: str):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)

    def all(self, tag: str) -> list[dict]:
        return [attrs for t, attrs in self.tags if t == tag]

    @property
    def plain(self) -> str:
        return " ".join(" ".join(self.text).split())


def _page(stored, tmp_path, capsys) -> tuple[Page, str, Path]:
    path, results = stored
    out = tmp_path / "report.html"
    capsys.readouterr()
    assert main(["report", str(path), "--results", str(results), "--html", str(out)]) == 0
    terminal = " ".join(capsys.readouterr().out.split())
    return Page(out.read_text()), terminal, out


def test_the_page_holds_every_terminal_table_and_the_charts(stored, tmp_path, capsys):
    page, terminal, _ = _page(stored, tmp_path, capsys)
    captions = page.plain
    for title in ("tiny: ablation, digits acc1 (%), over seeds", "unary / binary shares",
                  "costs (params, GFLOPs per image, training images/s)",
                  "tiny: status (12 runs)", "environments of the finished runs"):
        assert title in captions, title
        if "status" not in title and "environments" not in title:  # `status`'s, extra
            assert title in terminal, title  # the same tables the terminal report prints
    assert len(page.all("table")) >= 6
    # the ablation's CIs and verdicts, as the terminal shows them
    for text in ("95% CI", "Δ vs conv [95% CI]", "better", "not resolved", "p Holm"):
        assert text in page.plain, text
    assert any(a.get("class") == "best" for a in page.all("tr"))
    # the runs with their states and the failure's reason; the environment
    assert "Diverged: loss is nan at epoch 2" in page.plain and "pending" in page.plain
    assert "test-cpu" in page.plain and "2 threads" in page.plain
    # three charts, inlined as PNG
    images = page.all("img")
    assert len(images) == 3
    for img in images:
        assert img["src"].startswith("data:image/png;base64,") and img["alt"]
        assert base64.b64decode(img["src"].split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_page_needs_no_network(stored, tmp_path, capsys):
    page, _, out = _page(stored, tmp_path, capsys)
    policy = [m for m in page.all("meta") if m.get("http-equiv") == "Content-Security-Policy"]
    assert policy and "default-src 'none'" in policy[0]["content"]
    assert not page.all("script") and not page.all("link")
    for tag, attrs in page.tags:
        for key in ("src", "href"):
            value = attrs.get(key) or ""
            assert not value or value.startswith(("data:", "#")), (tag, key, value)
    assert "http://" not in out.read_text() and "https://" not in out.read_text()


def test_every_whisker_inside_its_axis(stored):
    path, results = stored
    exp = load_experiment(path)
    a = analyse(exp, collect(exp, exp.runs, results))
    fig = ablation_figure(a, "tiny")
    ax = fig.axes[0]
    low, high = ax.get_ylim()
    rows = [r for r in a.column("digits", "test/acc1").rows.values() if r.stats.mean is not None]
    assert len(rows) == 3
    for row in rows:
        assert low < row.stats.ci_low and row.stats.ci_high < high, row.name
    assert not [p for p in ax.patches if type(p).__name__ == "Rectangle"]  # no bars
    assert low < 0  # sa's whisker reaches below 0: the axis follows it, not a cut at 88 %
    for fig in (costs_figure(a, "tiny"), shares_figure(a, "tiny")):
        assert fig is not None
        for ax in fig.axes:
            lo, hi = ax.get_ylim()
            for line in ax.lines:
                ys = [y for y in line.get_ydata() if y == y]
                assert all(lo <= y <= hi for y in ys)


LIGHT = """
import sys
from bench.cli import main
assert main(["report", sys.argv[1], "--results", sys.argv[2], "--html", sys.argv[3]]) == 0
heavy = [m for m in ("torch", "lightning", "torchvision", "optuna") if m in sys.modules]
print("HEAVY", heavy)
"""


def test_report_html_stays_torch_free(stored, tmp_path):
    path, results = stored
    out = subprocess.run([sys.executable, "-c", LIGHT, str(path), str(results),
                          str(tmp_path / "r.html")], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "HEAVY []" in out.stdout


def test_html_output_must_end_in_html(stored, tmp_path, capsys):
    path, results = stored
    assert main(["report", str(path), "--results", str(results), "--html",
                 str(tmp_path / "report.png")]) == 2
    assert "--html" in capsys.readouterr().out


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        pytest.fail("chromium is not installed: run .ci/setup/chromium.sh (bash "
                    ".ci/setup/chromium.sh; .ci/run runs it before the suites)")
    return found


@pytest.mark.slow
def test_the_page_renders_in_headless_chromium(stored, tmp_path, capsys):
    from PIL import Image

    browser = chromium()
    _, _, out = _page(stored, tmp_path, capsys)
    base = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
            f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0",
            "--window-size=1400,2400"]
    dom = subprocess.run([*base, "--dump-dom", out.as_uri()], capture_output=True, text=True,
                         timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    # the page has no scripts: any console message is a load error or a blocked request
    console = [line for line in dom.stderr.splitlines() if ":CONSOLE" in line]
    assert not console, console
    rendered = Page(dom.stdout)
    assert len(rendered.all("table")) >= 6 and len(rendered.all("img")) == 3
    assert "tiny: ablation, digits acc1 (%), over seeds" in rendered.plain

    png = tmp_path / "page.png"
    shot = subprocess.run([*base, f"--screenshot={png}", out.as_uri()], capture_output=True,
                          text=True, timeout=120)
    assert shot.returncode == 0 and png.exists(), shot.stderr[-2000:]
    image = Image.open(png).convert("RGB")
    colours = image.getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 50, "the screenshot is blank"
    # the charts' blue points exist only inside the images: they were decoded and drawn
    blue = sum(n for n, rgb in colours if abs(rgb[0] - 0x3B) < 12 and abs(rgb[1] - 0x75) < 12
               and abs(rgb[2] - 0xAF) < 12)
    assert blue > 50, "no chart pixels in the screenshot"
