"""Lookups by name with a did-you-mean hint (the one place lesa/ and bench/ phrase a typo's
error), and the names of the built-in strategies and backbones, read without importing torch."""
from __future__ import annotations

import ast
import difflib
import functools
from pathlib import Path


def did_you_mean(word, options) -> str:
    """' (did you mean 'x'?)' for the closest option, or '' when nothing is close."""
    close = difflib.get_close_matches(str(word), [str(o) for o in options], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def unknown(kind: str, name, options) -> str:
    """The message for a name that is not one of `options`."""
    return (f"unknown {kind} {name!r}{did_you_mean(name, options)}; "
            f"choose from {', '.join(str(o) for o in options)}")


@functools.cache
def builtin_fusions() -> tuple[str, ...]:
    """The strategy names fusion.py registers (`@register("name")`), in order, read from its source
    without importing it: configs and reports check names without loading torch. At run time
    `lesa.FUSIONS` is the registry (these and any registered since, e.g. by a plugin)."""
    names = []
    for node in _module_tree("fusion.py").body:
        for decorator in getattr(node, "decorator_list", []):
            if (isinstance(decorator, ast.Call) and getattr(decorator.func, "id", "") == "register"
                    and decorator.args and isinstance(decorator.args[0], ast.Constant)):
                names.append(decorator.args[0].value)
    return tuple(names)


@functools.cache
def builtin_backbones() -> tuple[str, ...]:
    """The keys of backbone.py's `ARCHS`, in order, read without importing torch."""
    for node in _module_tree("backbone.py").body:
        target = node.target if isinstance(node, ast.AnnAssign) else (
            node.targets[0] if isinstance(node, ast.Assign) else None)
        if getattr(target, "id", None) == "ARCHS" and isinstance(node.value, ast.Dict):
            return tuple(key.value for key in node.value.keys)
    raise LookupError("lesa/backbone.py defines no ARCHS dict")


def _module_tree(name: str) -> ast.Module:
    return ast.parse((Path(__file__).parent / name).read_text(encoding="utf-8"))
