"""The report's text building blocks, shared by every table builder (views.py,
interval_views.py, the sweep views) and every renderer (terminal, md, LaTeX, HTML)."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class TextTable:
    title: str
    header: list[str]
    rows: list[list[str]] = field(default_factory=list)
    best: list[bool] = field(default_factory=list)  # per row: shown as best (bold)
    notes: list[str] = field(default_factory=list)
    styles: list[dict[int, str]] = field(default_factory=list)  # per row: column -> colour


@dataclass
class Line:
    """A line outside the tables. `kind` says how it is shown: description, legend, warning,
    failed, flagged, dim, plain; `label` (e.g. "failed") is set apart from the text."""
    text: str
    kind: str = "plain"
    label: str = ""
    indent: bool = False

    def plain(self) -> str:
        """As the exports write it: `failed: <run>: <reason>`."""
        if not self.label:
            return self.text
        return f"{self.label}{'' if self.label.endswith(':') else ':'} {self.text}"


__all__ = ["Line", "TextTable"]
