"""The HTML page's section of the test images each strategy fixes and breaks most often across
its seed pairs with the baseline (per_image.py: fixes_breaks), with thumbnails
(thumbnails.py, which rebuilds the test set and needs torch: imported only when a comparison
has such images). Self-contained: every thumbnail is a data: URI."""
from __future__ import annotations

import html

from bench.report.analysis import Analysis
from bench.report.records import cell_key, split_of
from bench.store import RunState

CSS = """
.thumbs { display: flex; flex-wrap: wrap; gap: 0.5em; margin: 0.3em 0 1em; }
.thumbs figure { margin: 0; text-align: center; }
.thumbs img { image-rendering: pixelated; border: 1px solid #ccc; display: block;
              margin: 0 auto; }
.thumbs figcaption { font-size: 0.8em; color: #444; }
"""


def _record(a: Analysis, dataset: str, split):
    return next((r for r in a.records if r.state == RunState.DONE
                 and r.run.config["data"]["name"] == dataset
                 and split_of(cell_key(r.run)) == split), None)


def _thumbs(items: list[tuple[int, int]], pairs: int, thumbs, labels, kind: str) -> str:
    if not items:
        return f'<p class="line dim">no image {kind} in any seed pair</p>'
    out = []
    for index, count in items:
        label = int(labels[index]) if labels is not None and index < len(labels) else "?"
        caption = f"#{index}, label {label}, {count}/{pairs}"
        img = ""
        if thumbs is not None:
            img = (f'<img alt="test image {index} (label {label})" '
                   f'src="{thumbs.png(index)}">')
        out.append(f"<figure>{img}<figcaption>{html.escape(caption)}</figcaption></figure>")
    return f'<div class="thumbs">{"".join(out)}</div>'


def fixes_html(a: Analysis) -> str:
    """The section's body ('' where no comparison has per-image records)."""
    parts = []
    for dataset, tests in a.images.items():
        for split, s in tests.splits.items():
            found = {row: fb for row, fb in s.fixes.items() if fb.n_pairs}
            if not found:
                continue
            thumbs, why = None, ""
            if any(fb.top_fixes or fb.top_breaks for fb in found.values()):
                from bench.report.thumbnails import thumbnails_for

                record = _record(a, dataset, split)
                thumbs, why = thumbnails_for(record.run.config) if record else (None, "")
            where = dataset if split is None else f"{dataset}, data split {split}"
            parts.append(f"<h3>{html.escape(where)}</h3>")
            if why:
                parts.append(f'<p class="line yellow">{html.escape(why)}</p>')
            for row, fb in found.items():
                base = tests.baselines.get(row, "?")
                parts.append(
                    f'<p class="line"><span class="bold">{html.escape(row)} vs '
                    f'{html.escape(base)}</span> over {fb.n_pairs} seed pair(s): fixed (the '
                    f'baseline wrong, {html.escape(row)} right), most often first</p>')
                parts.append(_thumbs(fb.top_fixes, fb.n_pairs, thumbs, s.labels, "fixed"))
                parts.append(f'<p class="line">broken ({html.escape(base)} right, '
                             f'{html.escape(row)} wrong)</p>')
                parts.append(_thumbs(fb.top_breaks, fb.n_pairs, thumbs, s.labels, "broken"))
    if not parts:
        return ""
    note = ("<p class=\"line dim\">Per test image, the number of seed pairs in which it is "
            "fixed or broken (#index in the test split, its label, pairs/all pairs). An image "
            "one pair fixes is often noise; one every pair fixes is worth a look. Descriptive, "
            "not a test (docs/statistics.md).</p>")
    return note + "\n".join(parts)


__all__ = ["CSS", "fixes_html"]
