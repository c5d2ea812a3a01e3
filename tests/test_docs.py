"""The documents against the code: every repository path, `lesa-bench` command and config key
that README.md, docs/*.md and results/README.md name must exist, parse and be a schema key.

What counts as a mention (each kind is checked where it is found, line by line):

- a path: a word starting with bench/, lesa/, tests/, experiments/, docs/, results/ or .ci/,
  anywhere (prose, inline code, code blocks); `*` and `<placeholder>` parts are globs that must
  match something. A relative Markdown link must reach a file inside the repository, and its
  `#anchor` a heading of that file. Paths that users' runs create are allowed (USER_PATHS).
- a module: a dotted name starting with `bench.` or `lesa.` (`bench.config.fusion_names()`,
  `lesa.kernels.fused_cpu.status()`): a module file or package, then at most one name that
  module binds, read from its source (no import, so no torch).
- a command: every `lesa-bench ...` in a code block or inline code, and inline code that starts
  with a subcommand and a flag (`run --jobs N`): `bench.cli.build_parser()` must accept its
  subcommand and flags (placeholders such as EXP, N, `md|csv` stand for a valid value; inline
  code may leave out the experiment). Its --set/--only keys must be config keys. A `run`,
  `status` or `slurm` command that names a repository experiment file is run with --dry-run
  into a temporary results folder. A backticked lone flag (`--retry-failed`) must be a flag of
  some subcommand (or of another tool: OTHER_FLAGS). `make X`: a Makefile target.
- a config key: a dotted name in inline code whose first part is a top-level section
  (`model.fusion`, `trainer.loggers: [csv]`, `model.detection.*`), each key of a YAML example
  (fenced `yaml`, or an indented block that parses as a config), and --set/--only keys. It must
  be a key (or a section) of `bench.config.schema.schema_for(name)` for some dataset in
  `bench.data.DATASETS`, or of the sweep section (bench/config/sweep.py). A complete example
  experiment (with `matrix:`) must also load.

The keys-and-defaults section of docs/experiments.md is rendered from the schema
(`render_keys_section`); `python tests/test_docs.py` prints it. In the spirit of
tests/test_catalogue.py's `test_every_case_is_documented`; no torch is imported.
"""
from __future__ import annotations

import ast
import contextlib
import functools
import io
import re
import shlex
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "results" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# paths users' runs create, named in the documents as where to look; results/ is git-ignored
# (results/README.md describes it), so nothing under it but README.md is in the repository
USER_PATHS = {"results/": "runs, sweeps and SLURM scripts land under results/<experiment>/"}
# flags of other tools that the documents put in backticks, with the tool
# (docs/clusters.md's table of the sbatch options `lesa-bench slurm` writes)
OTHER_FLAGS = {"--gres": "sbatch", "--cpus-per-task": "sbatch", "--signal": "sbatch",
               "--array": "sbatch"}
# subcommands whose first positional is the experiment file
EXPERIMENT_COMMANDS = ("run", "status", "report", "sweep", "slurm")
# commands cheap to run for real with --dry-run on a repository experiment file (no torch)
DRY_RUN_COMMANDS = ("run", "slurm", "status")

PATH_RE = re.compile(r"(?<![\w./@~$-])(?:bench|lesa|tests|experiments|docs|results|\.ci)/"
                     r"[\w.*<>%/-]*")
MODULE_RE = re.compile(r"(?<![\w./-])(?:bench|lesa)(?:\.[A-Za-z_]\w*)+")
LINK_RE = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
INLINE_RE = re.compile(r"`((?:[^`\n]|\n(?![ \t]*\n))+)`")  # may wrap a line, not a paragraph
SHELL_OPS = {"&&", "||", ";", "|", "&", ">", ">>", "2>&1"}


# ---------------------------------------------------------------------------------------------
# the schema: which dotted keys exist


def _leaf_and_section_keys(cfg: dict, prefix: str = "") -> set[str]:
    keys = set()
    for key, value in cfg.items():
        keys.add(f"{prefix}{key}")
        if isinstance(value, dict) and value:
            keys |= _leaf_and_section_keys(value, f"{prefix}{key}.")
    return keys


@functools.cache
def config_keys() -> frozenset[str]:
    """Every dotted key and section of a run config, over every dataset (and its task)."""
    from bench.config.schema import schema_for
    from bench.data import DATASETS

    keys = set()
    for name in DATASETS:
        keys |= _leaf_and_section_keys(schema_for(name))
    return frozenset(keys)


@functools.cache
def sweep_keys() -> frozenset[str]:
    """The keys of the `sweep:` section, its sampler's and pruner's options."""
    from bench.config.sweep import BUDGET_KEYS, PRUNERS, SAMPLERS, SWEEP_KEYS

    keys = {f"sweep.{k}" for k in SWEEP_KEYS} | {f"sweep.budget.{k}" for k in BUDGET_KEYS}
    for part, table in (("sampler", SAMPLERS), ("pruner", PRUNERS)):
        keys.add(f"sweep.{part}.name")
        keys |= {f"sweep.{part}.{option}" for options in table.values() for option in options}
    return frozenset(keys)


def key_problem(key: str, keys=None, swept=None) -> str | None:
    """Why `key` (dotted, maybe ending in .*) is not a config key, or None."""
    from bench.config.schema import TOP_LEVEL

    keys, swept = keys or config_keys(), swept or sweep_keys()
    section = key.split(".")[0]
    if section not in TOP_LEVEL:
        return f"{section!r} is not a top-level key ({', '.join(TOP_LEVEL)})"
    if "." not in key:
        return None
    base = key[:-2] if key.endswith(".*") else key
    if section == "sweep":
        if base.startswith("sweep.params."):  # a search-space entry names a config key
            return key_problem(base[len("sweep.params."):], keys, swept)
        return None if base in swept else "not a key of the sweep section (bench/config/sweep.py)"
    if section in ("data", "model", "optim", "trainer"):
        return None if base in keys else "not a key of any dataset's schema (bench/config/)"
    if section == "analysis":
        from bench.config.analysis import KEYS

        parts = base.split(".")
        ok = parts[1] in KEYS and (len(parts) == 2 or parts[1] == "margin" and len(parts) == 3)
        return None if ok else "not a key of the analysis section (bench/config/analysis.py)"
    return (f"no keys known for the {section!r} section: teach tests/test_docs.py's key_problem "
            f"where its keys are defined")


# ---------------------------------------------------------------------------------------------
# reading a document


@dataclass
class Doc:
    name: str  # the path shown in problems
    base: Path  # the folder its relative links start from
    prose: str  # the text with every code block line blanked (line numbers kept)
    code: list[tuple[int, str, str]]  # (line, text, fence language or "" when indented)


def read_doc(text: str, name: str, base: Path) -> Doc:
    prose, code = [], []
    fence = None
    for number, line in enumerate(text.split("\n"), 1):
        if line.lstrip().startswith("```"):
            fence = None if fence is not None else line.strip()[3:].strip()
            prose.append("")
        elif fence is not None:
            code.append((number, line, fence))
            prose.append("")
        elif line.startswith(("    ", "\t")):
            code.append((number, line, ""))
            prose.append("")
        else:
            prose.append(line)
    return Doc(name, base, "\n".join(prose), code)


def _line(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def inline_code(doc: Doc) -> list[tuple[int, str]]:
    return [(_line(doc.prose, m.start()), " ".join(m.group(1).split()))
            for m in INLINE_RE.finditer(doc.prose)]


def code_lines(doc: Doc) -> list[tuple[int, str]]:
    """Code lines with `\\`-continued lines joined (program output lines left out)."""
    lines, pending = [], None
    for number, text, _ in doc.code:
        text = text.strip()
        if pending is not None:
            pending = (pending[0], pending[1] + " " + text)
        else:
            pending = (number, text)
        if text.endswith("\\"):
            pending = (pending[0], pending[1][:-1].rstrip())
            continue
        if not pending[1].startswith(("error:", "warning:")):
            lines.append(pending)
        pending = None
    return lines + ([pending] if pending else [])


def headings(path: Path) -> set[str]:
    """GitHub's anchors of a Markdown file's headings."""
    anchors = set()
    for line in read_doc(path.read_text(), "", path.parent).prose.split("\n"):
        m = re.match(r"#+\s+(.*)", line)
        if m:
            title = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower())
            anchors.add(title.replace(" ", "-"))
    return anchors


# ---------------------------------------------------------------------------------------------
# the checks; each returns problems as "DOC:LINE: KIND `TEXT`: WHY"


def check_paths(doc: Doc) -> list[str]:
    problems = []
    texts = [(_line(doc.prose, m.start()), m.group(0)) for m in PATH_RE.finditer(doc.prose)]
    texts += [(n, m.group(0)) for n, line in code_lines(doc) for m in PATH_RE.finditer(line)]
    for number, path in texts:
        path = path.rstrip(".")
        if any(path.startswith(p) for p in USER_PATHS) and path != "results/README.md":
            continue
        pattern = re.sub(r"<[^>]*>", "*", path)
        found = any(ROOT.glob(pattern.rstrip("/"))) if "*" in pattern else (
            (ROOT / path).exists() and (ROOT / path).resolve().is_relative_to(ROOT))
        if not found:
            problems.append(f"{doc.name}:{number}: path `{path}`: not in the repository")
    for m in LINK_RE.finditer(doc.prose):
        number, target = _line(doc.prose, m.start()), m.group(1)
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        file, _, anchor = target.partition("#")
        path = (doc.base / file).resolve() if file else None
        if path is not None and not path.is_relative_to(ROOT):
            problems.append(f"{doc.name}:{number}: link `{target}`: outside the repository")
        elif path is not None and not path.exists():
            problems.append(f"{doc.name}:{number}: link `{target}`: no such file")
        elif anchor:
            md = path if path is not None else ROOT / doc.name
            if md.suffix == ".md" and md.is_file() and anchor not in headings(md):
                problems.append(f"{doc.name}:{number}: link `{target}`: no heading #{anchor}")
    for number, line in [(_line(doc.prose, 0), doc.prose)] + code_lines(doc):
        for m in re.finditer(r"(?:\.\./)*(?<![\w.-])shared/[\w./-]*|/work/[\w./-]*", line):
            n = number + line.count("\n", 0, m.start())
            problems.append(f"{doc.name}:{n}: path `{m.group(0)}`: outside the repository")
    return problems


def _bound_names(path: Path) -> set[str]:
    """The names a module binds at its top level, and the lazy exports its `__getattr__` serves
    (lesa/__init__.py's `_EXPORTS`)."""
    tree = ast.parse(path.read_text())
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {t.id for t in targets if isinstance(t, ast.Name)}
            if any(isinstance(t, ast.Name) and t.id == "_EXPORTS" for t in targets) \
                    and isinstance(node.value, ast.Dict):
                names |= {k.value for k in node.value.keys if isinstance(k, ast.Constant)}
    return names


def module_problem(dotted: str) -> str | None:
    """Why `bench.x.y` / `lesa.x.Name` names no module or name, or None."""
    parts = dotted.split(".")
    folder = ROOT / parts[0]
    for i, part in enumerate(parts[1:], 1):
        if (folder / part / "__init__.py").is_file():
            folder = folder / part
            continue
        if (folder / f"{part}.py").is_file():
            module = folder / f"{part}.py"
            rest = parts[i + 1:]
        else:
            module, rest = folder / "__init__.py", parts[i:]
        # the first name after the module must be bound there; attributes of it are not checked
        if rest and rest[0] not in _bound_names(module):
            return f"{module.relative_to(ROOT)} has no {rest[0]!r}"
        return None
    return None


def check_modules(doc: Doc) -> list[str]:
    texts = [(_line(doc.prose, m.start()), m.group(0)) for m in MODULE_RE.finditer(doc.prose)]
    texts += [(n, m.group(0)) for n, line in code_lines(doc) for m in MODULE_RE.finditer(line)]
    problems = []
    for number, dotted in texts:
        why = module_problem(dotted)
        if why:
            problems.append(f"{doc.name}:{number}: module `{dotted}`: {why}")
    return problems


@dataclass
class Command:
    doc: str
    line: int
    argv: list[str]  # after `lesa-bench`
    inline: bool  # inline code: the experiment may be left out


def _after_lesa_bench(words: list[str]) -> list[str] | None:
    for i, word in enumerate(words):
        if word == "lesa-bench" or word.endswith("/lesa-bench"):
            rest = []
            for w in words[i + 1:]:
                if w in SHELL_OPS or w.startswith(">"):
                    break
                rest.append(w)
            return rest
        if word.startswith("lesa-bench "):  # quoted: sbatch --wrap "lesa-bench sweep ..."
            return _after_lesa_bench(shlex.split(word))
    return None


def commands(doc: Doc) -> list[Command]:
    from bench.cli import build_parser

    subcommands = set(_subparsers(build_parser()))
    found = []
    for number, line in code_lines(doc):
        if "lesa-bench" in line:
            try:
                words = shlex.split(line, comments=True)
            except ValueError:  # an unbalanced quote in a comment
                words = line.split("#")[0].split()
            argv = _after_lesa_bench(words)
            if argv is not None:
                found.append(Command(doc.name, number, argv, inline=False))
    for number, text in inline_code(doc):
        words = text.split()
        if words[0] == "lesa-bench":
            found.append(Command(doc.name, number, _after_lesa_bench(shlex.split(text)), True))
        elif words[0] in subcommands and len(words) > 1 and (
                words[1].startswith("-") or len(words) > 2 and words[2].startswith("-")):
            found.append(Command(doc.name, number, shlex.split(text), True))
    return found


def _subparsers(parser) -> dict:
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _placeholders(argv: list[str]) -> list[str]:
    """A placeholder stands for a valid value: `md|csv` -> md, `[-o FILE]` -> -o 1, EXP -> 1."""
    out = []
    for word in argv:
        word = word.strip("[]")
        if word in ("", "...", "|"):
            continue
        if "|" in word:
            word = word.split("|")[0]
        if re.fullmatch(r"[A-Z][A-Z_]*", word):
            word = "1"
        out.append(word)
    return out


def parse_command(argv: list[str], inline: bool):
    """(namespace, None) or (None, argparse's complaint)."""
    from bench.cli import build_parser

    def attempt(words):
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                return build_parser().parse_args(words), None
        except SystemExit:
            return None, (err.getvalue().strip().splitlines() or ["?"])[-1]

    words = _placeholders(argv)
    args, why = attempt(words)
    sub = next((i for i, w in enumerate(words) if not w.startswith("-")), None)
    if args is None and inline and "required" in why and sub is not None and \
            words[sub] in EXPERIMENT_COMMANDS:  # `lesa-bench report` in a sentence
        args, why = attempt([*words[:sub + 1], "EXP", *words[sub + 1:]])
    return args, why


def check_commands(doc: Doc) -> list[str]:
    keys, swept = config_keys(), sweep_keys()
    problems = []
    for cmd in commands(doc):
        text = shlex.join(["lesa-bench", *cmd.argv])
        args, why = parse_command(cmd.argv, cmd.inline)
        if args is None:
            problems.append(f"{doc.name}:{cmd.line}: command `{text}`: {why}")
            continue
        if args.command == "convert":  # its --set takes digit_scenes options, not config keys
            continue
        for flag in ("set", "only"):
            for assignment in getattr(args, flag, None) or []:
                key = assignment.split("=", 1)[0]
                if "." in key and key_problem(key, keys, swept):
                    problems.append(f"{doc.name}:{cmd.line}: command `{text}`: --{flag} "
                                    f"{key}: {key_problem(key, keys, swept)}")
    return problems


def all_flags() -> set[str]:
    from bench.cli import build_parser

    parser = build_parser()
    parsers = [parser, *_subparsers(parser).values()]
    flags = set()
    while parsers:
        p = parsers.pop()
        flags |= {o for a in p._actions for o in a.option_strings}
        parsers += _subparsers(p).values()
    return flags


def check_flags(doc: Doc) -> list[str]:
    """Backticked lone flags (`--retry-failed`, `--sbatch=OPTION`, the key of `--set k=v`) and
    `make` targets."""
    flags, keys, swept = all_flags(), config_keys(), sweep_keys()
    targets = set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), re.M))
    problems = []
    for number, text in inline_code(doc) + code_lines(doc):
        m = re.match(r"(--[\w-]+)", text)
        if m and m.group(1) not in flags and m.group(1) not in OTHER_FLAGS:
            problems.append(f"{doc.name}:{number}: flag `{m.group(1)}`: no lesa-bench "
                            f"subcommand takes it")
        for m in re.finditer(r"^--(?:set|only)[ =]([\w.]+\.[\w.]+)=", text):
            why = key_problem(m.group(1), keys, swept)
            if why:
                problems.append(f"{doc.name}:{number}: `{m.group(0)}`: {why}")
        m = re.match(r"make ([\w-]+)", text)
        if m and m.group(1) not in targets:
            problems.append(f"{doc.name}:{number}: `make {m.group(1)}`: no such Makefile target")
    return problems


def _key_re() -> re.Pattern:
    from bench.config.schema import TOP_LEVEL

    return re.compile(rf"(?<![\w./-])((?:{'|'.join(TOP_LEVEL)})(?:\.(?:[A-Za-z_]\w*|\*))+)"
                      rf"(?![\w(/.])")


def _yaml_keys(raw: dict) -> list[str]:
    """The dotted keys an experiment example sets: sections flattened, matrix axes and bundles,
    sweep keys, its params and enqueued points."""
    from bench.config.schema import TOP_LEVEL

    keys = config_keys()

    def flatten(value, prefix):
        out = [prefix]
        if isinstance(value, dict) and any(k.startswith(prefix + ".") for k in keys):
            for k, v in value.items():
                out += flatten(v, f"{prefix}.{k}")
        return out

    found = []
    for top, value in raw.items():
        if top not in TOP_LEVEL:
            found.append(top)
        elif top in ("data", "model", "optim", "trainer") and isinstance(value, dict):
            found += flatten(value, top)[1:]
        elif top == "matrix" and isinstance(value, dict):
            for axis, values in value.items():
                if "." in axis:
                    found.append(axis)
                for v in values if isinstance(values, list) else []:
                    found += [k for k in v if "." in k] if isinstance(v, dict) else []
        elif top == "sweep" and isinstance(value, dict):
            found += [f"sweep.{k}" for k in value]
            for k, v in value.items():
                if isinstance(v, dict) and k in ("sampler", "pruner"):
                    found += [f"sweep.{k}.{o}" for o in v]
            found += [f"sweep.params.{k}" for k in value.get("params") or {}]
            for point in value.get("enqueue") or []:
                found += [f"sweep.params.{k}" for k in point]
    return found


def yaml_examples(doc: Doc) -> list[tuple[int, dict]]:
    """Fenced yaml blocks, indented blocks and inline code (`data: {name: cifar10}`) that parse
    as a mapping of top-level keys."""
    from bench.config.schema import TOP_LEVEL

    examples = []
    for number, text in inline_code(doc):
        if re.match(rf"(?:{'|'.join(TOP_LEVEL)}): ", text):
            with contextlib.suppress(yaml.YAMLError):
                raw = yaml.safe_load(text)
                if isinstance(raw, dict):
                    examples.append((number, raw))

    chunks: list[tuple[int, list[str], str]] = []
    last = None
    for number, text, fence in doc.code:
        if chunks and last == number - 1 and chunks[-1][2] == fence and (fence or text.strip()):
            chunks[-1][1].append(text)
        elif fence or text.strip():
            chunks.append((number, [text], fence))
        last = number
    for number, lines, fence in chunks:
        if fence not in ("yaml", ""):
            continue
        try:
            raw = yaml.safe_load("\n".join(line[4:] if not fence else line for line in lines))
        except yaml.YAMLError:
            continue
        if isinstance(raw, dict) and (fence == "yaml" or set(raw) <= set(TOP_LEVEL)):
            examples.append((number, raw))
    return examples


def check_keys(doc: Doc) -> list[str]:
    from bench.config import ConfigError, experiment_from_dict

    keys, swept, key_re = config_keys(), sweep_keys(), _key_re()
    problems = []
    for number, text in inline_code(doc):
        for m in key_re.finditer(text):
            why = key_problem(m.group(1), keys, swept)
            if why:
                problems.append(f"{doc.name}:{number}: key `{m.group(1)}`: {why}")
    for number, raw in yaml_examples(doc):
        for key in _yaml_keys(raw):
            why = key_problem(key, keys, swept)
            if why:
                problems.append(f"{doc.name}:{number}: key `{key}` (YAML example): {why}")
        if "matrix" in raw and "name" in raw:  # a whole experiment: it must load
            try:
                experiment_from_dict(raw)
            except ConfigError as err:
                problems.append(f"{doc.name}:{number}: YAML example does not load: {err}")
    return problems


CHECKS = {"paths": check_paths, "modules": check_modules, "commands": check_commands,
          "flags": check_flags, "keys": check_keys}


def check_text(text: str, name: str = "docs/planted.md", checks=tuple(CHECKS)) -> list[str]:
    doc = read_doc(text, name, (ROOT / name).parent)
    return [p for check in checks for p in CHECKS[check](doc)]


def _doc(path: Path) -> Doc:
    return read_doc(path.read_text(), str(path.relative_to(ROOT)), path.parent)


# ---------------------------------------------------------------------------------------------
# the keys-and-defaults section of docs/experiments.md, rendered from the schema

# what a key's default and allowed values do not say
KEY_NOTES = {
    "data.root": "the dataset's folder",
    "data.split_seed": "draws the val/test sets, [paired design](#paired-design)",
    "model.max_size": "the reach of the relative position tables",
    "model.stem": "the backbone's",
    "model.window": "global attention; a block size like 8, or per stage like {3: null, 4: 8}",
    "model.recompute_attention": "memory for time, same results",
    "model.channels_last": "channels-last weights and maps",
    "model.static_weight": "c of `static`, U + c B",
    "model.release": "the released code's choices, [library.md](library.md#the-releases-choices)",
    "model.logits": "the release preset's, else the default",
    "model.positions": "the release preset's, else the default",
    "model.unary": "the release preset's, else the default",
    "model.deformable_stages": "the release preset's, else none; a list like [2, 3, 4]",
    "model.width": "the bottlenecks' width multiplier",
    "model.norm_eval": "the detection release's true, else false: BatchNorm on running "
                       "statistics in training",
    "model.frozen_stages": "the detection release's 1, else -1: k freezes the stem and stages "
                           "1..k",
    "model.detection.anchor_sizes": "one per FPN level, px",
    "model.detection.min_size": "native resolution",
    "model.detection.max_size": "native resolution",
    "optim.lr_batch": "`lr` as given; a number N: `lr` is per N images, scaled to the real batch",
    "optim.weight_decay": "not on biases, norms and position tables",
    "optim.warmup_epochs": "linear warm-up, then cosine",
    "trainer.loggers": "any of {loggers}, [views.md](views.md)",
    "trainer.mlflow_uri": "results/<experiment>/mlflow.db",
    "trainer.seeds": "`init` seeds the weights, `order` the data (null: the run's `seed`), "
                     "[statistics.md](statistics.md#2-splits-as-blocks-the-two-level-interval)",
}
# said before (ending in ":") or after a section's keys
SECTION_NOTES = {"data": "and the dataset's options ([data.md](data.md))",
                 "model.detection": "detection runs only ([data.md](data.md#detection)):"}


def _value(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_value(v)}" for k, v in value.items()) + "}"
    return str(value)


def render_keys_section() -> str:
    """Top-level keys and the table of every section's keys, defaults and allowed values."""
    from bench.config.loggers import LOGGER_NAMES
    from bench.config.schema import DEFAULTS, TOP_LEVEL, choices
    from bench.data import COMMON_OPTIONS
    from bench.tasks import TASKS

    allowed = choices()
    sections = {"data": COMMON_OPTIONS, "model": DEFAULTS["model"]}
    sections |= {f"model.{task}": spec.options for task, spec in TASKS.items() if spec.options}
    sections |= {"optim": DEFAULTS["optim"], "trainer": DEFAULTS["trainer"]}
    rows = []
    for section, defaults in sections.items():
        section_note = SECTION_NOTES.get(section, "")
        cells = []
        for key, default in defaults.items():
            path = f"{section}.{key}"
            text = _value(default)
            note = KEY_NOTES.get(path, "").replace("{loggers}", ", ".join(LOGGER_NAMES))
            if note:
                text += f": {note}"
            others = [_value(v) for v in allowed.get(path, ()) if v != default]
            if others:
                text += f"; or {', '.join(others)}"
            cells.append(f"`{key}` ({text})")
        before = section_note.endswith(":")
        text = ", ".join(cells + ([section_note] if section_note and not before else []))
        if before:
            text = f"{section_note} {text}"
        rows.append(f"| `{section}` | {text} |")
    top = textwrap.fill(f"Top-level keys: {', '.join(f'`{k}`' for k in TOP_LEVEL)}. Every key "
                        "not given takes its default:", width=97)
    return (f"{top}\n\n"
            "| section | keys (default) |\n|---|---|\n" + "\n".join(rows) + "\n")


# ---------------------------------------------------------------------------------------------
# the tests


@pytest.fixture(scope="module")
def docs() -> list[Doc]:
    return [_doc(path) for path in DOCS]


@pytest.mark.parametrize("kind", list(CHECKS))
def test_documents_name_what_exists(docs, kind):
    problems = [p for doc in docs for p in CHECKS[kind](doc)]
    assert not problems, "\n".join(problems)


def test_documented_commands_dry_run(docs, tmp_path, capsys):
    """Every run/status/slurm command on a repository experiment file works with --dry-run."""
    from bench.cli import main

    seen, failed = set(), []
    for cmd in [c for doc in docs for c in commands(doc)]:
        argv = _placeholders(cmd.argv)
        if argv and argv[0] == "--debug":
            argv = argv[1:]
        if len(argv) < 2 or argv[0] not in DRY_RUN_COMMANDS or not (
                argv[1].startswith("experiments/") and (ROOT / argv[1]).is_file()) \
                or any("$" in a for a in argv) or "--best-params" in argv:
            continue  # placeholders, shell variables, or a sweep's results needed
        if "--results" in argv:
            i = argv.index("--results")
            argv = argv[:i] + argv[i + 2:]
        argv = [argv[0], str(ROOT / argv[1]), *argv[2:], "--results", str(tmp_path)]
        if argv[0] != "status" and "--dry-run" not in argv:
            argv.append("--dry-run")
        if tuple(argv) in seen:
            continue
        seen.add(tuple(argv))
        code = main(argv)
        out = capsys.readouterr()
        if code != 0:
            failed.append(f"{cmd.doc}:{cmd.line}: `lesa-bench {shlex.join(cmd.argv)}` exit "
                          f"{code}: {(out.out + out.err).strip()[-300:]}")
    assert seen, "no command to dry-run found"
    assert not failed, "\n".join(failed)


def test_keys_section_is_rendered_from_the_schema():
    doc = (ROOT / "docs" / "experiments.md").read_text()
    assert render_keys_section() in doc, (
        "docs/experiments.md's keys and defaults differ from the schema: paste the output of "
        "`python tests/test_docs.py` over them")


def test_every_dataset_option_is_documented():
    """docs/data.md (and docs/probes.md for the probes) name each dataset option with its
    default, as `key` (default...)."""
    from bench.data import DATASETS

    text = (ROOT / "docs" / "data.md").read_text() + (ROOT / "docs" / "probes.md").read_text()
    missing = [f"{name}: {key} ({_value(default)})" for name, spec in DATASETS.items()
               for key, default in spec.options.items() if not isinstance(default, dict)
               and not re.search(rf"`{key}` \({re.escape(_value(default))}[),:;]", text)]
    assert not missing, f"not in docs/data.md or docs/probes.md: {missing}"


def test_results_readme_lists_what_the_store_writes():
    """Every file and folder bench/store.py's docstring lists for a run is in results/README.md."""
    store = ast.get_docstring(ast.parse((ROOT / "bench" / "store.py").read_text()))
    names = re.findall(r"^    (\S+) ", store, re.M)
    text = (ROOT / "results" / "README.md").read_text()
    assert len(names) >= 5, names  # the docstring still lists the files
    missing = [n for n in names if not re.search(rf"^\s+{re.escape(n)}\s", text, re.M)]
    assert not missing, f"not in results/README.md: {missing}"


def test_error_example_is_what_the_cli_prints(tmp_path, monkeypatch, capsys):
    """docs/experiments.md's example error is the message the CLI prints for it today."""
    from bench.cli import main

    doc = (ROOT / "docs" / "experiments.md").read_text()
    (example,) = re.findall(r"^    (error: experiments/x\.yaml: .*)$", doc, re.M)
    (tmp_path / "experiments").mkdir()
    (tmp_path / "experiments" / "x.yaml").write_text("name: x\nmodel: {fusion: dynamc}\n")
    monkeypatch.chdir(tmp_path)
    assert main(["run", "experiments/x.yaml", "--dry-run"]) == 2
    assert " ".join(capsys.readouterr().out.split()) == example


def test_readme_layout_names_every_package():
    """README's Layout names every package of bench/ and lesa/, and every file it names exists
    in the folder of its line (or that folder's parent)."""
    text = (ROOT / "README.md").read_text()
    block = re.search(r"## Layout\n\n((?:    .*\n|\n)+)", text).group(1)
    top, problems, named = ROOT, [], set()
    for line in block.splitlines():
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        m = re.match(r"\s*((?:[\w.]+/,? ?)+)", line)
        folders = re.findall(r"[\w.]+/", m.group(1)) if m else []
        if indent == 4 and folders:
            top = ROOT / folders[0]
            here = [top]
        elif folders:
            here = [top / f for f in folders]
        named |= {str(f.relative_to(ROOT)) for f in here}
        for name in re.findall(r"(?<![\w/.-])([\w.]+(?:\.py|\.yaml|/))(?![\w])", line):
            if not any((f / name).exists() or (f.parent / name).exists() for f in here):
                problems.append(f"{name} (line {line.strip()!r})")
            if name.endswith("/"):
                named |= {str((f / name).relative_to(ROOT)).rstrip("/") for f in here
                          if (f / name).exists()}
    packages = {str(p.parent.relative_to(ROOT)) for pkg in ("bench", "lesa")
                for p in (ROOT / pkg).glob("*/__init__.py")}
    assert not problems, f"README Layout names what does not exist: {problems}"
    assert packages <= named, f"README Layout leaves out: {sorted(packages - named)}"


# a pointer out of the repository, pieced together so this file itself holds none
OUTSIDE = "../../" + "shared/" + "notes/statistics.md"
PLANTED = """# Planted

The runner is bench/run/train.py and the stats `bench.report.stats`; see [x](nowhere.md).
Set `model.fusoin` or `trainer.max_epochs` ([keys](experiments.md#no-such-heading)), e.g.
Statistics: [notes](OUTSIDE); `--retry-faild`; `make tset`.

    lesa-bench run experiments/quick.yaml --dry-runn
    lesa-bench run EXP --set model.headz=2

```yaml
model: {backbone: resnet_tiny, fusion: sa}
optim: {lrr: 0.1}
```
""".replace("OUTSIDE", OUTSIDE)


def test_checker_reports_planted_errors():
    problems = check_text(PLANTED)
    expected = ["path `bench/run/train.py`", "module `bench.report.stats`",
                "link `nowhere.md`: no such file", "no heading #no-such-heading",
                f"link `{OUTSIDE}`: outside the repository",
                f"path `{OUTSIDE}`: outside", "flag `--retry-faild`", "`make tset`",
                "key `model.fusoin`", "--dry-runn", "--set model.headz",
                "key `optim.lrr` (YAML example)"]
    for fragment in expected:
        assert any(fragment in p for p in problems), (fragment, problems)
    assert len(problems) == len(expected), problems
    assert not any("max_epochs" in p for p in problems)


if __name__ == "__main__":
    print(render_keys_section())
