"""Lookups by name with a did-you-mean hint: the one place lesa/ and bench/ phrase a typo's error."""
from __future__ import annotations

import difflib


def did_you_mean(word, options) -> str:
    """' (did you mean 'x'?)' for the closest option, or '' when nothing is close."""
    close = difflib.get_close_matches(str(word), [str(o) for o in options], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def unknown(kind: str, name, options) -> str:
    """The message for a name that is not one of `options`."""
    return (f"unknown {kind} {name!r}{did_you_mean(name, options)}; "
            f"choose from {', '.join(str(o) for o in options)}")
