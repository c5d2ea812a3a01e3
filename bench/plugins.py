"""Plugins: strategies, datasets, backbones and tasks from outside the package (docs/plugins.md).

An experiment's `plugins:` list names Python files (relative to the experiment file) or
importable modules; installed packages add modules through the entry-point group
`lesa_bench.plugins`. A plugin registers its items with the registries the built-ins use
(`lesa.fusion.register`, `lesa.backbone.register_backbone`, `bench.data.register_dataset`,
`bench.tasks.register_task`); this module loads it once per process (the same file under two
names is one plugin), notes which items it added, and hashes its source: a run that uses a
plugin's item records the plugin's sha256 in its config, so its id follows the code.

`activate` makes the registries hold the built-ins, the installed entry points and exactly the
plugins the experiment lists (one loaded earlier in this process and not listed is unloaded):
each command sees its own experiment's plugins. Nothing here imports torch; a plugin may.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import re
import sys
import sysconfig
import traceback
import types
from dataclasses import dataclass, field
from pathlib import Path

from lesa.names import builtin_backbones, builtin_fusions, did_you_mean

ENTRY_POINT_GROUP = "lesa_bench.plugins"
PACKAGE = "lesa_bench_plugins"  # file plugins live in sys.modules under this (pickling)
ID_FIELDS = ("sha256", "version")  # what of a plugin's record goes into run ids
KINDS = ("strategy", "backbone", "dataset", "task")


class PluginError(ValueError):
    """A plugin that cannot be loaded: the message names the file (and line) and the reason."""


@dataclass(eq=False)
class Plugin:
    name: str  # a file's stem, a module's name, an entry point's name
    source: str  # the file, or the module name
    key: str  # the resolved file: one plugin whatever name it was given by
    module: str  # its name in sys.modules
    files: list[Path] = field(default_factory=list)  # what its sha256 covers
    sha256: str = ""
    provides: dict[str, list[str]] = field(default_factory=dict)  # kind -> names
    version: str | None = None  # the distribution's version, for an entry point
    entry_point: bool = False
    modules: list[str] = field(default_factory=list)  # what loading it put in sys.modules

    def record(self) -> dict:
        """What a run's config records of it (ID_FIELDS go into the run id)."""
        out = {"sha256": self.sha256, "source": self.source}
        if self.version is not None:
            out["version"] = self.version
        return out

    def items(self) -> str:
        return ", ".join(f"{kind} {name}" for kind, names in self.provides.items()
                         for name in names)


_LOADED: dict[str, Plugin] = {}  # key -> plugin
_PROVIDED: dict[tuple[str, str], Plugin] = {}  # (kind, name) -> the plugin that registered it
_ENTRY_POINTS_DONE = False


# --- the registries ---------------------------------------------------------------------------


def _registries() -> dict[str, tuple[set[str], object]]:
    """kind -> (the names registered now, the function that removes one). lesa's registries
    count as their built-ins while lesa is not imported (no torch here)."""
    from bench.data import DATASETS, unregister_dataset
    from bench.tasks import TASKS, unregister_task

    fusion, backbone = sys.modules.get("lesa.fusion"), sys.modules.get("lesa.backbone")
    return {
        "strategy": (set(fusion.FUSIONS) if fusion else set(builtin_fusions()),
                     lambda n: sys.modules["lesa.fusion"].unregister(n)),
        "backbone": (set(backbone.ARCHS) if backbone else set(builtin_backbones()),
                     lambda n: sys.modules["lesa.backbone"].unregister_backbone(n)),
        "dataset": (set(DATASETS), unregister_dataset),
        "task": (set(TASKS), unregister_task)}


def _names() -> dict[str, set[str]]:
    return {kind: names for kind, (names, _) in _registries().items()}


def loaded_files() -> set[Path]:
    """The source files of every plugin loaded in this process."""
    return {f for plugin in _LOADED.values() for f in plugin.files}


def provider(kind: str, name: str) -> Plugin | None:
    """The plugin that registered this item, or None for a built-in."""
    return _PROVIDED.get((kind, name))


# --- loading ----------------------------------------------------------------------------------


def _sha256(files: list[Path], root: Path | None) -> str:
    """sha256 of the one file's bytes (what `sha256sum FILE` prints), or of the `sha256sum`
    lines of several (paths relative to the plugin's folder)."""
    if len(files) == 1:
        return hashlib.sha256(files[0].read_bytes()).hexdigest()
    lines = []
    for path in sorted(files):
        rel = path.relative_to(root) if root and path.is_relative_to(root) else path
        lines.append(f"{hashlib.sha256(path.read_bytes()).hexdigest()}  {rel}\n")
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def _library_paths() -> list[Path]:
    """Where installed and standard modules live: never part of a plugin's own source."""
    paths = {sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")}
    here = Path(__file__).resolve().parents[1]
    return [Path(p).resolve() for p in paths] + [here / "bench", here / "lesa"]


def _own_file(path: Path, root: Path | None) -> bool:
    if root is None or not path.is_relative_to(root):
        return False
    return not any(path.is_relative_to(lib) for lib in _library_paths())


def _real(file) -> Path | None:
    """A module's or frame's file as a resolved path, or None where it names no real file
    (torch._classes says "_classes.py", frozen modules "<frozen ...>")."""
    if not isinstance(file, str) or not Path(file).is_absolute() or not Path(file).is_file():
        return None
    return Path(file).resolve()


def _new_modules(before: set[str], root: Path | None) -> tuple[list[str], list[Path]]:
    """The modules imported since `before` whose file lies under `root` (a plugin's helpers)."""
    names, files = [], []
    for name in set(sys.modules) - before:
        path = _real(getattr(sys.modules.get(name), "__file__", None))
        if path is not None and _own_file(path, root):
            names.append(name)
            files.append(path)
    return names, files


def _failure(err: BaseException, where: str, own: set[Path], root: Path | None) -> PluginError:
    """The error as one line naming the plugin's file and line (no traceback)."""
    if isinstance(err, SyntaxError) and err.filename:
        text = (err.text or "").strip()
        return PluginError(f"{where}: {err.filename}, line {err.lineno}: SyntaxError: {err.msg}"
                           + (f": {text}" if text else ""))
    files = [(f, _real(f.filename)) for f in traceback.extract_tb(err.__traceback__)]
    frames = [f for f, path in files if path is not None and (path in own
                                                              or _own_file(path, root))]
    place = f"{frames[-1].filename}, line {frames[-1].lineno}: " if frames else ""
    return PluginError(f"{where}: {place}{type(err).__name__}: {err}")


def _is_file(text: str) -> bool:
    return text.endswith(".py") or "/" in text or "\\" in text


def _key(text: str, base: Path) -> str | None:
    """The resolved file a plugin entry names (None when it names nothing findable)."""
    if _is_file(text):
        path = (base / Path(text).expanduser())
        return str(path.resolve()) if path.is_file() else None
    try:
        spec = importlib.util.find_spec(text)
    except (ImportError, ValueError):
        return None
    return str(Path(spec.origin).resolve()) if spec and spec.origin else None


def _check_text(text, where: str) -> str:
    if not isinstance(text, str) or not text.strip():
        raise PluginError(f"{where}: {text!r}: expected a Python file (a path, relative to the "
                          f"experiment file) or an importable module name")
    return text.strip()


def load(text: str, base: Path, where: str = "plugin", version: str | None = None,
         name: str | None = None, entry_point: bool = False) -> Plugin:
    """Load one plugin (a file, relative to `base`, or a module name) unless it is loaded
    already with the same source; PluginError naming it otherwise."""
    text = _check_text(text, where)
    if _is_file(text):
        path = (base / Path(text).expanduser())
        if not path.is_file():
            folder = path.parent
            hint = did_you_mean(path.name, [p.name for p in folder.glob("*.py")]) \
                if folder.is_dir() else ""
            raise PluginError(f"{where}: {text!r}: no such file {str(path)!r}{hint}")
        path = path.resolve()
        key, root, label = str(path), path.parent, name or path.stem
    else:
        key = _key(text, base)
        if key is None:
            raise PluginError(f"{where}: {text!r}: no module named {text!r} can be imported "
                              f"(and it is no .py file); a file is given by its path, e.g. "
                              f"./{text.split('.')[-1]}.py")
        path = Path(key)
        top = importlib.util.find_spec(text.split(".")[0])
        locations = list(getattr(top, "submodule_search_locations", None) or [])
        root = Path(locations[0]).resolve() if locations else path.parent
        label = name or text
    loaded = _LOADED.get(key)
    if loaded is not None:
        if loaded.sha256 == _sha256([f for f in loaded.files if f.is_file()], root) \
                and all(f.is_file() for f in loaded.files):
            return loaded
        unload(loaded)  # edited since it was loaded in this process: load it again
    clash = next((p for p in _LOADED.values() if p.name == label), None)
    if clash is not None:
        raise PluginError(f"{where}: {text!r}: another plugin is named {label!r} already "
                          f"({clash.source}); rename one of the files")
    return _execute(text, path, root, key, label, where, version, entry_point)


def _execute(text, path: Path, root: Path, key: str, label: str, where: str, version,
             entry_point: bool) -> Plugin:
    before_modules, before = set(sys.modules), _names()
    own = {path}
    if _is_file(text):
        module_name = PACKAGE + "." + re.sub(r"\W", "_", path.stem)
        if module_name in sys.modules:
            module_name += "_" + hashlib.sha1(key.encode()).hexdigest()[:8]
        sys.modules.setdefault(PACKAGE, _package())
        if str(root) not in sys.path:  # as Python does for a script: it imports its neighbours
            sys.path.insert(0, str(root))
        spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module  # before it runs: its classes pickle by this name
        try:
            exec(compile(path.read_bytes(), str(path), "exec"), module.__dict__)
        except BaseException as err:  # noqa: BLE001 - any failure is the plugin's, said in a line
            _forget_modules([module_name, *_new_modules(before_modules, root)[0]])
            _roll_back(before)
            if isinstance(err, KeyboardInterrupt):
                raise
            raise _failure(err, where, own, root) from None
    else:
        module_name = text
        try:
            importlib.import_module(text)
        except BaseException as err:  # noqa: BLE001
            # its own modules only: a library it imported first (torch) stays imported
            _forget_modules([text, *_new_modules(before_modules, root)[0]])
            _roll_back(before)
            if isinstance(err, KeyboardInterrupt):
                raise
            raise _failure(err, where, own, root) from None
    helpers, files = _new_modules(before_modules, root)
    after = _names()
    provides = {kind: sorted(after[kind] - before[kind]) for kind in KINDS
                if after[kind] - before[kind]}
    plugin = Plugin(label, str(path) if _is_file(text) else text, key, module_name,
                    sorted({path, *files}), "", provides, version, entry_point,
                    [module_name, *[h for h in helpers if h != module_name]])
    plugin.sha256 = _sha256(plugin.files, root)
    for kind, names in provides.items():
        for item in names:
            _PROVIDED[(kind, item)] = plugin
    _LOADED[key] = plugin
    problem = _problem(plugin)
    if problem:
        unload(plugin)
        raise PluginError(f"{where}: {plugin.source}: {problem}")
    return plugin


def _package() -> types.ModuleType:
    package = types.ModuleType(PACKAGE, "the plugin files lesa-bench loaded (bench/plugins.py)")
    package.__path__ = []
    return package


def _problem(plugin: Plugin) -> str | None:
    """What makes a loaded plugin unusable: it registers nothing, or a dataset of a task that
    no registry knows."""
    if not plugin.provides:
        return ("registers nothing: a plugin registers a strategy (@lesa.fusion.register), a "
                "dataset (bench.data.register_dataset), a backbone "
                "(lesa.backbone.register_backbone) or a task (bench.tasks.register_task) when "
                "it is imported")
    from bench.data import DATASETS
    from bench.tasks import TASKS

    for name in plugin.provides.get("dataset", []):
        task = DATASETS[name].task
        if task not in TASKS:
            return (f"dataset {name!r} names the task {task!r}{did_you_mean(task, TASKS)}; "
                    f"tasks: {', '.join(TASKS)}")
    return None


def _roll_back(before: dict[str, set[str]]) -> None:
    """Remove what a plugin that failed half-way registered."""
    for kind, (names, remove) in _registries().items():
        for name in names - before[kind]:
            remove(name)


def _forget_modules(names) -> None:
    for name in names:
        sys.modules.pop(name, None)


def unload(plugin: Plugin) -> None:
    """Remove a plugin's items from the registries and its modules from sys.modules."""
    registries = _registries()
    for kind, names in plugin.provides.items():
        for name in names:
            if _PROVIDED.get((kind, name)) is plugin:
                del _PROVIDED[(kind, name)]
                registries[kind][1](name)
    _forget_modules(plugin.modules)
    _LOADED.pop(plugin.key, None)


def unload_all(entry_points: bool = False) -> None:
    """Unload every plugin files and modules brought in (and the entry points' with
    `entry_points`): the registries hold the built-ins again."""
    global _ENTRY_POINTS_DONE
    for plugin in list(_LOADED.values()):
        if entry_points or not plugin.entry_point:
            unload(plugin)
    if entry_points:
        _ENTRY_POINTS_DONE = False


def load_entry_points() -> list[Plugin]:
    """The installed packages' plugins (entry-point group lesa_bench.plugins), once per process;
    none installed: nothing is imported."""
    global _ENTRY_POINTS_DONE
    if _ENTRY_POINTS_DONE:
        return [p for p in _LOADED.values() if p.entry_point]
    from importlib.metadata import entry_points

    loaded = []
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        where = f"entry point {ep.name} = {ep.value} ({ENTRY_POINT_GROUP})"
        dist = getattr(ep, "dist", None)
        version = f"{dist.name} {dist.version}" if dist is not None else None
        plugin = load(ep.module, Path.cwd(), where, version, ep.name, entry_point=True)
        if ep.attr:  # "module:function": the function registers the items
            before = _names()
            try:
                getattr(sys.modules[ep.module], ep.attr)()
            except Exception as err:  # noqa: BLE001
                _roll_back(before)
                raise _failure(err, where, set(plugin.files), None) from None
            after = _names()
            for kind in KINDS:
                for item in sorted(after[kind] - before[kind]):
                    plugin.provides.setdefault(kind, []).append(item)
                    _PROVIDED[(kind, item)] = plugin
        loaded.append(plugin)
    _ENTRY_POINTS_DONE = True
    return loaded


def activate(entries, base: Path, where: str = "plugins") -> list[Plugin]:
    """Load the listed plugins (files relative to `base`, or module names) and the installed
    entry points; unload the file and module plugins loaded before that are not listed."""
    if entries is None:
        entries = []
    if not isinstance(entries, list):
        raise PluginError(f"{where}: expected a list of Python files or module names, e.g. "
                          f"[./my_strategy.py], got {entries!r}")
    # a config list's entries by index (plugins[1]), a command line's by its flag
    names = [f"{where}[{i}]" if where == "plugins" else where for i in range(len(entries))]
    texts = [_check_text(t, n) for t, n in zip(entries, names)]
    keys = {_key(t, base) for t in texts}
    for plugin in list(_LOADED.values()):
        if not plugin.entry_point and plugin.key not in keys:
            unload(plugin)
    plugins = load_entry_points()
    for text, name in zip(texts, names):
        plugin = load(text, base, name)
        if plugin not in plugins:
            plugins.append(plugin)
    return plugins


# --- identity ---------------------------------------------------------------------------------


def identity(cfg: dict) -> dict:
    """{plugin name: its record} for the plugins whose items this run config uses (its strategy,
    backbone, dataset and the dataset's task); {} for a run of built-ins only."""
    from bench.data import DATASETS

    model, data = cfg.get("model") or {}, cfg.get("data") or {}
    used = [("strategy", model.get("fusion")), ("backbone", model.get("backbone")),
            ("dataset", data.get("name"))]
    spec = DATASETS.get(data.get("name"))
    if spec is not None:
        used.append(("task", spec.task))
    plugins = {p.name: p for p in (_PROVIDED.get(k) for k in used) if p is not None}
    return {name: plugins[name].record() for name in sorted(plugins)}


def label(name: str, record: dict) -> str:
    """`name@1a2b3c4d` (the sha256's first 8), with the distribution's version if any."""
    version = f" ({record['version']})" if record.get("version") else ""
    return f"{name}@{str(record.get('sha256', '?'))[:8]}{version}"


def versions_text(cfg: dict) -> str:
    """The plugin versions a run config records, for a status column ('' for built-ins)."""
    entries = cfg.get("plugins") if isinstance(cfg, dict) else None
    if not isinstance(entries, dict):
        return ""
    return ", ".join(label(n, r) for n, r in entries.items() if isinstance(r, dict))


def summary(configs: list[dict]) -> str:
    """'scalar_gate@1a2b3c4d (6 runs, /path/scalar_gate.py), ...' over run configs; ''."""
    found: dict[str, list] = {}
    for cfg in configs:
        for name, record in ((cfg or {}).get("plugins") or {}).items():
            if isinstance(record, dict):
                entry = found.setdefault(label(name, record), [0, record.get("source", "?")])
                entry[0] += 1
    return ", ".join(f"{text} ({n} runs, {source})" for text, (n, source) in found.items())


def other_versions(root: Path, ids: set[str], configs: list[dict]) -> list[str]:
    """Lines on the run folders under `root` that are not among `ids` and used another version
    of a plugin the runs' configs use: kept in the store, never mixed with these runs."""
    from bench.store import RunDir

    current = {n: r.get("sha256") for cfg in configs
               for n, r in (cfg.get("plugins") or {}).items() if isinstance(r, dict)}
    if not current or not root.is_dir():
        return []
    found: dict[str, dict[str, int]] = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and p.name not in ids):
        rd = RunDir(folder)
        stored = rd.config()
        entries = stored.get("plugins") if isinstance(stored, dict) else None
        for name, record in (entries or {}).items():
            if name in current and isinstance(record, dict) and \
                    record.get("sha256") != current[name]:
                states = found.setdefault(label(name, record), {})
                state = str(rd.status().get("state", "pending"))
                states[state] = states.get(state, 0) + 1
    return [f"{text}: {sum(s.values())} run(s) of an older version kept in {root} and left out "
            f"({', '.join(f'{n} {k}' for k, n in s.items())})" for text, s in found.items()]
