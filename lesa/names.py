"""Names: lookups with a did-you-mean hint (the one place lesa/ and bench/ phrase a typo's
error), `Registry` (the table every kind of named item lives in: strategies, backbones, and the
suite's datasets and tasks), and the built-in strategy and backbone names read from their
source without importing torch. No torch here."""
from __future__ import annotations

import ast
import difflib
import functools
import re
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
        value = node.value if isinstance(node, (ast.Assign, ast.AnnAssign)) else None
        if isinstance(value, ast.Call):  # Registry("backbone", Arch, {...}).seal()
            inner = value.func.value if isinstance(value.func, ast.Attribute) else value
            value = next((a for a in getattr(inner, "args", []) if isinstance(a, ast.Dict)), None)
        if getattr(target, "id", None) == "ARCHS" and isinstance(value, ast.Dict):
            return tuple(key.value for key in value.keys)
    raise LookupError("lesa/backbone.py defines no ARCHS dict")


def _module_tree(name: str) -> ast.Module:
    return ast.parse((Path(__file__).parent / name).read_text(encoding="utf-8"))


NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")  # a registered name: part of run ids and folders


class Registry(dict):
    """name -> item: the one source of one kind's names (strategies, backbones, datasets,
    tasks). `seal()` marks what it holds as the built-ins. `add` registers another (a plugin's):
    a name that is no plain identifier, an item of another type, or a taken name (a built-in's
    above all) is refused, and the same item again is a no-op; `remove` drops any but a
    built-in. `home`: where the built-ins are defined, named in the refusal; `classes`: the
    items are subclasses of `item_type` (strategies), not instances."""

    def __init__(self, kind: str, item_type: type, items=(), home: str = "",
                 classes: bool = False):
        super().__init__(items)
        self.kind, self.item_type, self.home, self.classes = kind, item_type, home, classes
        self.builtin: frozenset = frozenset()

    def seal(self) -> "Registry":
        self.builtin = frozenset(self)
        return self

    def check_name(self, name) -> None:
        if not isinstance(name, str) or not NAME.fullmatch(name):
            raise ValueError(f"{self.kind} name {name!r}: use letters, digits and _ (starting "
                             f"with a letter); it becomes part of run ids and folder names")

    def add(self, name: str, item, check=None):
        """Register `item` under `name` (`check(name, item)`: the kind's own checks)."""
        self.check_name(name)
        ok = (isinstance(item, type) and issubclass(item, self.item_type) if self.classes
              else isinstance(item, self.item_type))
        if not ok:
            what = "a subclass of " if self.classes else ""
            raise TypeError(f"{self.kind} {name!r}: expected {what or 'a '}"
                            f"{self.item_type.__module__}.{self.item_type.__qualname__}, not "
                            f"{item!r}")
        taken = self.get(name)
        if taken is not None and taken != item:
            if name in self.builtin:
                where = f"a built-in {self.kind}" + (f" ({self.home})" if self.home else "")
            elif isinstance(taken, type):
                where = f"taken by {taken.__module__}.{taken.__qualname__}"
            else:
                where = "taken by another spec"
            yours = item.__qualname__ if isinstance(item, type) else "yours"
            raise ValueError(f"{self.kind} name {name!r} is {where}; register {yours} under "
                             f"another name")
        if check is not None:
            check(name, item)
        self[name] = item
        return item

    def remove(self, name: str) -> None:
        """Remove a name that is not a built-in (a plugin's, when it is unloaded)."""
        if name in self.builtin:
            raise ValueError(f"{self.kind} {name!r} is a built-in; it cannot be removed")
        self.pop(name, None)
