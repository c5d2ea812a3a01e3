"""`report --html FILE`: the whole report as one self-contained HTML page.

Everything the terminal report prints, in its order (the ablation tables with CIs, verdicts and
notes, the share analysis, shares, costs, incomplete / failed / flagged runs), then every run
and its state (`status`), the environments, and the charts (bench/report/plots.py) as inline
PNGs. The tables are not rebuilt here: tables.py prints them into a transcript that keeps the
rich tables and lines as objects, and this module only writes them as HTML, so the page and
the terminal cannot disagree. No scripts, no fonts, no links out: a Content-Security-Policy
forbids the browser any request, so the file opens the same offline, mailed or archived.
"""
from __future__ import annotations

import base64
import html
import io
import time
from pathlib import Path

from rich.table import Table
from rich.text import Text

from bench.config import Experiment
from bench.report.analysis import Analysis
from bench.report.images_html import CSS as IMAGES_CSS
from bench.report.images_html import fixes_html
from bench.report.plots import (ablation_figure, costs_figure, curves_figure, headline_figure,
                                shares_figure)
from bench.report.records import RunRecord, environments
from bench.report.tables import print_status, print_tables
from bench.store import experiment_dir

CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 0 auto; max-width: 1400px;
       padding: 1em 2em; color: #222; background: #fff; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ccc; }
nav a { margin-right: 1em; }
.scroll { overflow-x: auto; margin: 1em 0; }
table { border-collapse: collapse; font-variant-numeric: tabular-nums; }
caption { text-align: left; font-weight: 600; padding: 0.3em 0; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.6em; white-space: nowrap; }
.l { text-align: left; } .r { text-align: right; } .c { text-align: center; }
thead th { background: #f3f5f8; }
tr.best td { font-weight: 700; color: #1e7d32; }
p.line { margin: 0.2em 0; white-space: pre-wrap; }
.dim { color: #666; } .bold { font-weight: 700; }
.green { color: #1e7d32; } .red { color: #c62828; } .yellow { color: #a86b00; }
.cyan { color: #00838f; } .magenta { color: #8e24aa; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #555; font-size: 0.9em; }
"""
# no request of any kind may leave the page: images are data: URIs, the style is inline
POLICY = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


class Transcript:
    """Stands in for the rich Console: keeps what the report prints, in order, as objects."""

    def __init__(self):
        self.items: list[tuple[object, str | None]] = []

    def print(self, *objects, style=None, **_) -> None:
        self.items += [(o, style) for o in objects]


def _classes(style) -> str:
    words = str(style or "").split()
    return " ".join(w for w in words if w in ("dim", "bold", "green", "red", "yellow", "cyan",
                                              "magenta"))


def markup_html(markup: str, style=None) -> str:
    """Rich markup (and a style) as escaped HTML with the colours as classes."""
    text = Text.from_markup(markup) if isinstance(markup, str) else markup
    plain, out, at = text.plain, [], 0
    for span in sorted(text.spans, key=lambda s: s.start):
        if span.start < at:  # nested: the outer span already carries it
            continue
        out.append(html.escape(plain[at:span.start]))
        piece = html.escape(plain[span.start:span.end])
        cls = _classes(span.style)
        out.append(f'<span class="{cls}">{piece}</span>' if cls else piece)
        at = span.end
    out.append(html.escape(plain[at:]))
    body = "".join(out)
    cls = _classes(style)
    return f'<span class="{cls}">{body}</span>' if cls else body


def table_html(table: Table) -> str:
    """A rich Table as an HTML table: title, headers, cells; rows shown bold green (the "best"
    rows of the ablation) get class best."""
    columns = table.columns
    # each column aligned as the terminal aligns it (numbers right, names left)
    align = [{"right": "r", "center": "c"}.get(c.justify, "l") for c in columns]
    head = "".join(f'<th class="{a}">{markup_html(str(c.header))}</th>'
                   for c, a in zip(columns, align))
    rows = list(zip(*[list(c.cells) for c in columns])) if columns else []
    body = []
    for row in rows:
        best = all(str(c).startswith("[bold green]") for c in row if str(c))
        cells = "".join(f'<td class="{a}">{markup_html(str(c))}</td>' for c, a in zip(row, align))
        body.append(f'<tr class="best">{cells}</tr>' if best and any(map(str, row))
                    else f"<tr>{cells}</tr>")
    title = markup_html(str(table.title)) if table.title else ""
    return (f'<div class="scroll"><table><caption>{title}</caption><thead><tr>{head}</tr>'
            f'</thead><tbody>{"".join(body)}</tbody></table></div>')


def transcript_html(transcript: Transcript) -> str:
    parts = []
    for obj, style in transcript.items:
        if isinstance(obj, Table):
            parts.append(table_html(obj))
        else:
            parts.append(f'<p class="line">{markup_html(str(obj).strip(), style)}</p>')
    return "\n".join(parts)


def figure_html(fig, caption: str) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return (f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def _environments_html(records: list[RunRecord]) -> str:
    envs = environments(records)
    if not envs:
        return "<p>no finished runs</p>"
    rows = "".join(f"<tr><td>{html.escape(label)}</td><td>{len(ids)}</td></tr>"
                   for label, ids in envs.items())
    note = ("" if len(envs) == 1 else "<p class=\"line yellow\">mixed environments: float "
            "rounding differs between them and training amplifies it</p>")
    return (f'<div class="scroll"><table><caption>environments of the finished runs</caption>'
            f"<thead><tr><th>environment</th><th>runs</th></tr></thead><tbody>{rows}"
            f"</tbody></table></div>{note}")


def render_html(exp: Experiment, records: list[RunRecord], results: Path,
                analysis: Analysis) -> str:
    tables = Transcript()
    print_tables(exp, records, tables, analysis)
    runs = Transcript()
    print_status(exp, [r.run for r in records], results, runs)
    figures = [figure_html(ablation_figure(analysis, exp.name),
                           "ablation: each strategy's mean (point) and 95% CI of the mean "
                           "(whisker) over seeds; filled: best")]
    for make, caption in ((curves_figure, "training curves: validation metric and training "
                                          "loss per epoch, mean over seeds and pointwise 95% "
                                          "band"),
                          (headline_figure, "headline across datasets: IQM gain and "
                                            "P(improvement) against the baseline, 95% CI over "
                                            "seeds (thick) and datasets too (thin)"),
                          (costs_figure, "metric against cost per strategy"),
                          (shares_figure, "unary shares against their nulls")):
        fig = make(analysis, exp.name)
        if fig is not None:
            figures.append(figure_html(fig, caption))
    states: dict[str, int] = {}
    for r in records:
        states[str(r.state)] = states.get(str(r.state), 0) + 1
    summary = ", ".join(f"{n} {s}" for s, n in sorted(states.items()))
    title = f"lesa-bench report: {exp.name}"
    fixed = fixes_html(analysis)  # classification: the test images fixed and broken
    images = (f'<section id="images"><h2>Test images fixed and broken</h2>\n{fixed}\n'
              f'</section>') if fixed else ""
    images_link = '<a href="#images">images</a>' if fixed else ""
    where = experiment_dir(results, exp.name)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{POLICY}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title><style>{CSS}{IMAGES_CSS}</style></head>
<body>
<header><h1>{html.escape(title)}</h1>
{f'<p class="bold">{html.escape(analysis.description)}</p>' if analysis.description else ""}
<p>{len(records)} runs ({html.escape(summary)}) in {html.escape(str(where))}; generated
{time.strftime("%Y-%m-%d %H:%M:%S")}; baseline {html.escape(analysis.vs)}</p>
<nav><a href="#plots">plots</a><a href="#tables">tables</a>{images_link}<a href="#runs">runs</a>
<a href="#environment">environment</a></nav></header>
<section id="plots"><h2>Plots</h2>
{"".join(figures)}
</section>
<section id="tables"><h2>Tables</h2>
{transcript_html(tables)}
</section>
{images}
<section id="runs"><h2>Runs</h2>
{transcript_html(runs)}
</section>
<section id="environment"><h2>Environment</h2>
{_environments_html(records)}
</section>
</body></html>
"""


def write_html(exp: Experiment, records: list[RunRecord], results: Path, path: Path,
               analysis: Analysis) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_html(exp, records, results, analysis), encoding="utf-8")
