"""Plugins (bench/plugins.py, docs/plugins.md): strategies and datasets from files outside the
package, loaded once per process, refused when they shadow a built-in, and part of the run
ids of the runs that use them (editing a plugin makes new ids; the other runs keep theirs)."""
from __future__ import annotations

import hashlib
import pickle
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from bench import plugins
from bench.config import ConfigError, experiment_from_dict, load_experiment, run_id

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "plugins"
BASE = {"data": {"name": "digits", "image_size": 16, "batch_size": 32, "augment": False},
        "model": {"backbone": "resnet_tiny", "heads": 2, "max_size": 16},
        "trainer": {"max_epochs": 1, "limit_train_batches": 1, "limit_val_batches": 1,
                    "limit_test_batches": 1}}


@pytest.fixture(autouse=True)
def _no_plugins_left():
    yield
    plugins.unload_all(entry_points=True)


def _folder(tmp_path: Path, *names: str) -> Path:
    """A folder outside the repository holding copies of the example plugins."""
    folder = tmp_path / "mine"
    folder.mkdir(exist_ok=True)
    for name in names:
        shutil.copy(EXAMPLES / name, folder / name)
    return folder


def _experiment(folder: Path, listed, fusions=("conv", "scalar_gate"), **sections) -> Path:
    raw = {"name": "mine", "plugins": list(listed), **BASE,
           "matrix": {"model.fusion": list(fusions), "seed": [0]}}
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value}
    path = folder / "exp.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_a_plugin_strategy_runs_in_the_matrix_and_its_runs_record_its_source(tmp_path):
    folder = _folder(tmp_path, "scalar_gate.py")
    exp = load_experiment(_experiment(folder, ["scalar_gate.py"]))
    conv, gate = exp.runs
    digest = hashlib.sha256((folder / "scalar_gate.py").read_bytes()).hexdigest()
    assert gate.config["plugins"] == {"scalar_gate": {"sha256": digest,
                                                      "source": str(folder / "scalar_gate.py")}}
    assert gate.config["model"]["scalar_gate"] == {"alpha_init": 0.0}
    # a run of built-ins only keeps the id it has without the plugin
    plain = experiment_from_dict({"name": "mine", **BASE,
                                  "matrix": {"model.fusion": ["conv"], "seed": [0]}})
    assert "plugins" not in conv.config and conv.id == plain.runs[0].id
    # the id hashes the code, not where it lies: a moved folder keeps the ids
    moved = tmp_path / "elsewhere"
    shutil.copytree(folder, moved)
    again = load_experiment(moved / "exp.yaml")
    assert [r.id for r in again.runs] == [conv.id, gate.id]
    assert again.runs[1].config["plugins"]["scalar_gate"]["source"] == str(
        moved / "scalar_gate.py")
    assert run_id(gate.config) == gate.id  # a stored config hashes to its folder's name


def test_editing_a_plugin_makes_new_ids_for_its_runs_only(tmp_path):
    folder = _folder(tmp_path, "scalar_gate.py", "stripes.py")
    path = _experiment(folder, ["scalar_gate.py", "stripes.py"],
                       fusions=("conv", "dynamic", "scalar_gate"), data={"name": "stripes"})
    before = {r.config["model"]["fusion"]: r for r in load_experiment(path).runs}
    assert set(before["conv"].config["plugins"]) == {"stripes"}  # the dataset is a plugin's
    assert set(before["scalar_gate"].config["plugins"]) == {"scalar_gate", "stripes"}
    source = folder / "scalar_gate.py"
    source.write_text(source.read_text().replace("1.0 / (1.0 + gate.detach())",
                                                 "1 / (1 + gate.detach())"))
    after = {r.config["model"]["fusion"]: r for r in load_experiment(path).runs}
    assert after["scalar_gate"].id != before["scalar_gate"].id
    assert after["conv"].id == before["conv"].id and after["dynamic"].id == before["dynamic"].id


def test_a_plugin_is_loaded_once_whatever_name_it_is_given_and_pickles(tmp_path):
    folder = _folder(tmp_path, "scalar_gate.py")
    import lesa

    listed = ["scalar_gate.py", "./scalar_gate.py", str(folder / "scalar_gate.py")]
    (first,) = plugins.activate(listed, folder)
    assert plugins.activate(["scalar_gate.py"], folder) == [first]  # not run again
    cls = lesa.FUSIONS["scalar_gate"]
    assert cls.__module__ == "lesa_bench_plugins.scalar_gate" == first.module
    assert sys.modules[cls.__module__].ScalarGate is cls
    block = lesa.LESA2d(16, heads=2, fusion="scalar_gate", max_map_size=8)
    assert type(pickle.loads(pickle.dumps(block)).fusion) is cls
    assert first.provides == {"strategy": ["scalar_gate"]}


def test_a_module_name_is_a_plugin_and_the_same_file_by_path_is_the_same_one(tmp_path,
                                                                            monkeypatch):
    folder = _folder(tmp_path, "scalar_gate.py")
    monkeypatch.syspath_prepend(str(folder))
    (plugin,) = plugins.activate(["scalar_gate", "scalar_gate.py"], folder)
    assert plugin.name == plugin.module == "scalar_gate" and plugin.source == "scalar_gate"
    exp = load_experiment(_experiment(folder, ["scalar_gate"]))
    assert exp.runs[1].config["plugins"]["scalar_gate"]["sha256"] == hashlib.sha256(
        (folder / "scalar_gate.py").read_bytes()).hexdigest()
    (folder / "broken.py").write_text("import torch\nraise RuntimeError('not today')\n")
    with pytest.raises(plugins.PluginError, match=r"broken.py, line 2: RuntimeError: not today"):
        plugins.activate(["broken"], folder)
    assert "broken" not in sys.modules and "torch" in sys.modules  # its own module only


def test_activate_unloads_the_plugins_an_experiment_does_not_list(tmp_path):
    folder = _folder(tmp_path, "scalar_gate.py", "stripes.py")
    from bench.config import choices
    from bench.data import DATASETS

    plugins.activate(["scalar_gate.py", "stripes.py"], folder)
    assert "scalar_gate" in choices()["model.fusion"] and "stripes" in DATASETS
    experiment_from_dict({"name": "x", "matrix": {"model.fusion": ["conv"]}})
    assert "scalar_gate" not in choices()["model.fusion"] and "stripes" not in DATASETS
    assert not any(m.startswith("lesa_bench_plugins.") for m in sys.modules)


def test_the_registries_refuse_a_taken_name():
    import lesa
    from lesa.backbone import ARCHS, register_backbone
    from lesa.fusion import register

    from bench.data import DATASETS, register_dataset
    from bench.tasks import TASKS, register_task

    class Mine(lesa.Fusion):
        pass

    with pytest.raises(ValueError, match="'dynamic' is a built-in strategy"):
        register("dynamic")(Mine)
    with pytest.raises(ValueError, match="letters, digits and _"):
        register("my gate")
    with pytest.raises(TypeError, match="subclass of lesa.fusion.Fusion"):
        register("mine")(object)
    register("mine_x")(Mine)
    register("mine_x")(Mine)  # the same class again: a no-op

    class Other(lesa.Fusion):
        pass

    with pytest.raises(ValueError, match="'mine_x' is taken by"):
        register("mine_x")(Other)
    lesa.fusion.unregister("mine_x")
    with pytest.raises(ValueError, match="built-in"):
        lesa.fusion.unregister("conv")
    with pytest.raises(ValueError, match="'resnet50' is a built-in backbone"):
        register_backbone("resnet50", ARCHS["resnet26"])
    with pytest.raises(ValueError, match="'digits' is a built-in dataset"):
        register_dataset("digits", DATASETS["cifar10"])
    with pytest.raises(ValueError, match="batch_size are keys every dataset takes"):
        register_dataset("mine", DATASETS["cifar10"].__class__(
            "classification", "x.y:Z", {"batch_size": 4}))
    with pytest.raises(ValueError, match="'detection' is a built-in task"):
        register_task("detection", TASKS["classification"])


def test_strategy_options_are_config_keys_of_that_strategys_runs(tmp_path):
    folder = _folder(tmp_path, "scalar_gate.py")
    from bench.tasks import backbone_kwargs

    path = _experiment(folder, ["scalar_gate.py"], model={"scalar_gate": {"alpha_init": 1.5}})
    conv, gate = load_experiment(path).runs
    assert "scalar_gate" not in conv.config["model"]  # another strategy's options stay out
    assert backbone_kwargs(gate.config["model"])["fusion_options"] == {"alpha_init": 1.5}
    (tuned,) = load_experiment(path, ["model.scalar_gate.alpha_init=0.5"],
                               ["model.fusion=scalar_gate"]).runs
    assert tuned.config["model"]["scalar_gate"]["alpha_init"] == 0.5 and tuned.id != gate.id
    with pytest.raises(ConfigError, match=r"model.scalar_gate.alpha_nit: unknown key \(did you "
                                          r"mean 'alpha_init'\?\)"):
        load_experiment(path, ["model.scalar_gate.alpha_nit=1"])
    with pytest.raises(ConfigError, match="model.scalar_gate: alpha_init: 50 saturates"):
        load_experiment(path, ["model.scalar_gate.alpha_init=50"])
    with pytest.raises(ConfigError, match="model.scalar_gate.alpha_init: expected float"):
        load_experiment(path, ["model.scalar_gate.alpha_init=high"])
    with pytest.raises(ConfigError, match="--set plugins: list the plugins in the experiment"):
        load_experiment(path, ["plugins=[x.py]"])
    import lesa

    # options are model.<strategy>.*: a strategy with options may not be named as a model key
    lesa.fusion.register("window")(type("Window", (lesa.Fusion,), {"options": {"size": 3}}))
    try:
        with pytest.raises(ConfigError, match="model.window is taken"):
            experiment_from_dict({"name": "x", "matrix": {"model.fusion": ["conv"]}})
    finally:
        lesa.fusion.unregister("window")


@pytest.mark.parametrize("source, expect", [
    (None, "no such file"),
    ("import torch\nfrom lesa.fusion import register\n\ndef fuse(self x):\n    pass\n",
     "gate.py, line 4: SyntaxError: invalid syntax"),
    ("import math\nimport gatelib\n", "gate.py, line 2: ModuleNotFoundError: No module named "
                                      "'gatelib'"),
    ("from lesa.fusion import Fusion, register\n\n\n@register('dynamic')\nclass G(Fusion):\n"
     "    pass\n", "gate.py, line 4: ValueError: strategy name 'dynamic' is a built-in"),
    ("X = 1\n", "registers nothing"),
    ("from bench.data import DatasetSpec, register_dataset\nregister_dataset('g', DatasetSpec("
     "'segmentation', 'a.b:C'))\n", "dataset 'g' names the task 'segmentation'"),
])
def test_a_plugin_that_cannot_load_is_a_config_error_naming_file_and_line(tmp_path, source,
                                                                          expect):
    from bench.data import DATASETS

    folder = _folder(tmp_path)
    if source is not None:
        (folder / "gate.py").write_text(source)
    path = _experiment(folder, ["gate.py"], fusions=("conv",))
    with pytest.raises(ConfigError) as err:
        load_experiment(path)
    assert str(err.value).startswith(f"{path}: plugins[0]: ") and expect in str(err.value)
    assert "g" not in DATASETS and not plugins._LOADED  # nothing left half-registered


def test_two_files_with_one_name_and_a_module_that_is_not_there(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for folder in (a, b):
        folder.mkdir()
        shutil.copy(EXAMPLES / "stripes.py", folder / "stripes.py")
    with pytest.raises(plugins.PluginError, match="another plugin is named 'stripes'"):
        plugins.activate(["a/stripes.py", "b/stripes.py"], tmp_path)
    with pytest.raises(plugins.PluginError, match="no module named 'no_such_gate'"):
        plugins.activate(["no_such_gate"], tmp_path)


def test_an_entry_point_plugin_records_its_distribution_version(tmp_path, monkeypatch):
    import importlib.metadata

    package = tmp_path / "site" / "gatepkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    shutil.copy(EXAMPLES / "scalar_gate.py", package / "strategy.py")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    point = SimpleNamespace(name="gate", value="gatepkg.strategy", module="gatepkg.strategy",
                            attr=None, dist=SimpleNamespace(name="gatepkg", version="1.2.0"))
    monkeypatch.setattr(importlib.metadata, "entry_points",
                        lambda group: [point] if group == plugins.ENTRY_POINT_GROUP else [])
    plugins.unload_all(entry_points=True)
    exp = experiment_from_dict({"name": "x", **BASE, "matrix": {
        "model.fusion": ["scalar_gate"]}})  # listed nowhere: installed
    record = exp.runs[0].config["plugins"]["gate"]
    assert record["version"] == "gatepkg 1.2.0" and record["source"] == "gatepkg.strategy"
    assert plugins.label("gate", record).endswith("(gatepkg 1.2.0)")


def test_an_experiment_without_plugins_imports_no_torch(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text(yaml.safe_dump({"name": "x", "matrix": {"model.fusion": ["conv", "sa"]}}))
    code = ("import sys\nfrom bench.config import load_experiment\n"
            f"load_experiment({str(path)!r})\nassert 'torch' not in sys.modules\n")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def test_status_shows_each_runs_plugin_version_and_the_older_versions_kept(tmp_path, capsys):
    from bench.cli import main
    from bench.store import RunDir

    folder = _folder(tmp_path, "scalar_gate.py")
    path = _experiment(folder, ["scalar_gate.py"])
    results = tmp_path / "results"
    old = load_experiment(path).runs[1]
    rd = RunDir(results / "mine" / old.id)
    rd.create(old.config)
    rd.update_status(state="done", attempts=1)
    source = folder / "scalar_gate.py"
    source.write_text(source.read_text() + "\n# edited\n")
    assert main(["status", str(path), "--results", str(results)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    new = hashlib.sha256(source.read_bytes()).hexdigest()[:8]
    assert f"scalar_gate@{new}" in out and "plugin" in out
    assert (f"plugin scalar_gate@{old.config['plugins']['scalar_gate']['sha256'][:8]}: 1 run(s) "
            f"of an older version kept") in out and "(1 done)" in out
    assert rd.path.is_dir() and not plugins._LOADED  # main leaves no plugin loaded


def test_models_takes_a_plugin_strategy(tmp_path, capsys, monkeypatch):
    from bench.cli import main

    folder = _folder(tmp_path, "scalar_gate.py")
    monkeypatch.chdir(folder)
    assert main(["models", "--backbone", "resnet_tiny", "--size", "16", "--classes", "4",
                 "--plugin", "scalar_gate.py", "--format", "md"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if "scalar_gate" in line]
    assert len(rows) == 1 and rows[0].startswith("| scalar_gate |")
    assert main(["models", "--plugin", "nope.py"]) == 2
    assert "--plugin: 'nope.py': no such file" in " ".join(capsys.readouterr().out.split())


DEMO = {"name": "demo", "plugins": ["scalar_gate.py", "stripes.py"],
        "data": {"name": "stripes", "image_size": 16, "batch_size": 32, "train_images": 256,
                 "val_images": 64, "test_images": 128},
        "model": {"backbone": "resnet_tiny", "heads": 2, "max_size": 16},
        "optim": {"lr": 0.05, "warmup_epochs": 0},
        "trainer": {"max_epochs": 1, "limit_train_batches": 3, "limit_val_batches": 1,
                    "limit_test_batches": 2},
        "matrix": {"model.fusion": ["conv", "scalar_gate"], "seed": [0, 1]},
        "sweep": {"trials": 2, "sampler": {"name": "random", "seed": 0},
                  "params": {"optim.lr": {"low": 0.01, "high": 0.1, "log": True}}}}


def _cli(folder: Path, *argv: str) -> tuple[int, str]:
    """`lesa-bench ARGV` in a fresh process started in `folder` (outside the repository)."""
    proc = subprocess.run([sys.executable, "-m", "bench.cli", *argv], cwd=folder,
                          capture_output=True, text=True, timeout=600,
                          env={**__import__("os").environ, "COLUMNS": "200"})
    return proc.returncode, proc.stdout + proc.stderr


@pytest.mark.slow
def test_from_a_folder_outside_the_repository(tmp_path):
    """run --jobs 2 (workers load the plugins themselves), report, a sweep of two trials on two
    workers, slurm --dry-run; then the plugin edited: new pending ids, the old runs kept."""
    folder = _folder(tmp_path, "scalar_gate.py", "stripes.py")
    (folder / "exp.yaml").write_text(yaml.safe_dump(DEMO))
    code, out = _cli(folder, "run", "exp.yaml", "--jobs", "2")
    assert code == 0 and "4 done" in out, out
    code, out = _cli(folder, "report", "exp.yaml")
    row = next(line for line in out.splitlines() if line.startswith("│ scalar_gate"))
    assert code == 0 and "[" in row and ("not resolved" in row or "better" in row
                                         or "worse" in row), out
    assert "plugins: " in out and "scalar_gate@" in out
    for fmt in ("md", "json"):  # every export says which plugin code each row is
        code, out = _cli(folder, "report", "exp.yaml", "--format", fmt)
        assert code == 0 and "scalar_gate@" in out, out
    code, out = _cli(folder, "sweep", "exp.yaml", "--workers", "2", "--only",
                     "model.fusion=scalar_gate")
    assert code == 0 and "2/2" in out, out
    first = load_experiment(folder / "exp.yaml")
    plugins.unload_all()
    source = folder / "scalar_gate.py"
    source.write_text(source.read_text().replace("# set in an experiment", "# edited; set in"))
    code, out = _cli(folder, "run", "exp.yaml", "--dry-run")
    again = load_experiment(folder / "exp.yaml")
    old = {r.id for r in first.runs if r.config["model"]["fusion"] == "scalar_gate"}
    new = {r.id for r in again.runs if r.config["model"]["fusion"] == "scalar_gate"}
    assert code == 0 and not old & new and all(i in out for i in new), out
    # the two matrix runs and the two sweep trials of the old code
    assert "done: 2  pending: 2" in out and "4 run(s) of an older version kept" in out, out
    assert all((folder / "results" / "demo" / i / "metrics.json").is_file() for i in old)
    # the array's tasks load the same experiment file, so the same plugin files
    code, script = _cli(folder, "slurm", "exp.yaml", "--dry-run")
    assert code == 0 and f"slurm {folder / 'exp.yaml'} --results" in script, script
    assert all(i in script for i in new) and not any(i in script for i in old), script
