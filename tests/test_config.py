"""Experiment files: expansion, run ids, shards, and the messages bad files get."""
from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import yaml

import lesa
from bench import config
from bench.cli import main
from bench.config import ConfigError, experiment_from_dict, load_experiment, run_id, shard

ROOT = Path(__file__).resolve().parents[1]


def test_names_are_the_library_registries_read_without_torch():
    """Before torch is imported, the config reads lesa's registrations from its source; they are
    the registries themselves once lesa is loaded (plugins added), never a copied list."""
    import subprocess
    import sys

    code = ("import sys\nfrom bench import config\n"
            "names = (config.fusion_names(), config.backbone_names())\n"
            "assert 'torch' not in sys.modules\n"
            "import lesa\n"
            "assert names == (tuple(lesa.FUSIONS), tuple(lesa.ARCHS)), names\n"
            "lesa.register('mine')(type('Mine', (lesa.Fusion,), {}))\n"
            "assert config.fusion_names()[-1] == 'mine'\n")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def test_matrix_is_a_cartesian_product_with_stable_ids():
    exp = experiment_from_dict({"name": "x", "matrix": {"model.fusion": ["conv", "sa", "sum"],
                                                        "seed": [0, 1]}})
    assert len(exp.runs) == 6
    assert {(r.config["model"]["fusion"], r.config["seed"]) for r in exp.runs} == \
        {(f, s) for f in ("conv", "sa", "sum") for s in (0, 1)}
    again = experiment_from_dict({"name": "x", "matrix": {"seed": [0, 1],
                                                          "model.fusion": ["sum", "sa", "conv"]}})
    assert {r.id for r in exp.runs} == {r.id for r in again.runs}  # id = hash of the config
    changed = experiment_from_dict({"name": "x", "optim": {"lr": 0.2},
                                    "matrix": {"model.fusion": ["conv"]}})
    assert changed.runs[0].id not in {r.id for r in exp.runs}


def test_model_knobs_reach_the_model_and_the_run_id_only_when_they_change_results():
    from bench.tasks import backbone_kwargs

    base = {"name": "x", "matrix": {"model.fusion": ["sa"]}}
    plain = experiment_from_dict(base).runs[0]
    knob = experiment_from_dict({**base, "model": {"recompute_attention": True}}).runs[0]
    assert plain.id == knob.id  # same results (tests/test_fastpaths.py: bit-identical grads)
    assert plain.config["model"]["recompute_attention"] is False
    assert backbone_kwargs(knob.config["model"])["recompute_attention"] is True
    assert "recompute_attention" not in backbone_kwargs(plain.config["model"])
    with pytest.raises(ConfigError, match="recompute_attention"):
        experiment_from_dict({**base, "model": {"recompute_attention": "yes"}})
    # the memory layout: off by default, and then out of the id (ids stored before the key
    # existed stay valid); on, it is a different run (its gradients round differently)
    cl = experiment_from_dict({**base, "model": {"channels_last": True}}).runs[0]
    assert plain.config["model"]["channels_last"] is False and cl.id != plain.id
    assert plain.id == run_id(plain.config)
    without = copy.deepcopy(plain.config)
    del without["model"]["channels_last"]
    assert run_id(without) == plain.id
    assert backbone_kwargs(cl.config["model"])["channels_last"] is True
    assert "channels_last" not in backbone_kwargs(plain.config["model"])
    with pytest.raises(ConfigError, match="channels_last"):
        experiment_from_dict({**base, "model": {"channels_last": 1}})


def test_bundle_axis_sets_several_keys():
    exp = experiment_from_dict({"name": "x", "matrix": {"task": [
        {"data.name": "digits"}, {"data.name": "digits", "model.heads": 4}]}})
    assert [r.config["model"]["heads"] for r in exp.runs] == [8, 4]


def test_set_and_only():
    exp = experiment_from_dict({"name": "x", "matrix": {"model.fusion": ["conv", "sa"],
                                                        "seed": [0, 1]}},
                               overrides=["trainer.max_epochs=2", "seed=5"],
                               only=["model.fusion=sa"])
    assert [(r.config["model"]["fusion"], r.config["seed"]) for r in exp.runs] == [("sa", 5)]
    assert exp.runs[0].config["trainer"]["max_epochs"] == 2


def test_set_wins_over_a_bundle_axis_that_sets_the_same_key():
    """digits.yaml's task bundles set trainer.max_epochs; `--set trainer.max_epochs=1` used to
    be silently overridden by them (every run still trained 6 or 8 epochs)."""
    exp = load_experiment(ROOT / "experiments" / "digits.yaml",
                          ["trainer.max_epochs=1", "optim.lr=0.001"])
    assert {r.config["trainer"]["max_epochs"] for r in exp.runs} == {1}
    assert {r.config["optim"]["lr"] for r in exp.runs} == {0.001}
    # the rest of each bundle stays
    assert {r.config["optim"]["name"] for r in exp.runs} == {"sgd", "adamw"}
    plain = load_experiment(ROOT / "experiments" / "digits.yaml")
    assert {r.config["trainer"]["max_epochs"] for r in plain.runs} == {6, 8}


def test_a_task_specific_set_goes_to_the_runs_of_that_task():
    """On digits.yaml's mixed matrix `--set model.detection.head_convs=1` (or a detection-only
    data option) used to fail on the first classification run: it now changes the detection
    runs and leaves the classification runs (and their ids) as they were."""
    quick = ROOT / "experiments" / "digits.yaml"
    plain = {r.id: r for r in load_experiment(quick).runs}
    exp = load_experiment(quick, ["model.detection.head_convs=1", "data.distractors=[1, 3]"])
    by_task = {}
    for run in exp.runs:
        by_task.setdefault(run.config["data"]["name"], []).append(run)
    assert len(by_task["digits"]) == len(by_task["digit_scenes"]) == 14
    for run in by_task["digits"]:
        assert run.id in plain and "detection" not in run.config["model"]
    for run in by_task["digit_scenes"]:
        assert run.id not in plain
        assert run.config["model"]["detection"]["head_convs"] == 1
        assert run.config["model"]["detection"]["fpn_channels"] == 32  # the bundle's stays
        assert run.config["data"]["distractors"] == [1, 3]
    # a key no run has still fails, with the error of the runs that know most of it
    with pytest.raises(ConfigError, match="head_conv: unknown key .did you mean 'head_convs'"):
        load_experiment(quick, ["model.detection.head_conv=1"])
    # and on a classification-only matrix a detection key is an error, as before
    with pytest.raises(ConfigError, match="model.detection: unknown key"):
        load_experiment(ROOT / "experiments" / "cifar100_r50.yaml",
                        ["model.detection.head_convs=1"])


@pytest.mark.parametrize("count", [2, 3, 5])
def test_shards_cover_the_matrix_exactly_once(count):
    exp = load_experiment(ROOT / "experiments" / "quick.yaml")
    parts = [shard(exp.runs, f"{i}/{count}") for i in range(count)]
    ids = [r.id for part in parts for r in part]
    assert sorted(ids) == sorted(r.id for r in exp.runs)
    assert len(ids) == len(set(ids))


BAD = [
    # (what is wrong, file content or None for raw text, pieces the message must contain)
    ("unknown key", {"model": {"fusoin": "sa"}}, ["model.fusoin", "did you mean 'fusion'"]),
    ("unknown top-level key", {"matrx": {}}, ["matrx", "did you mean 'matrix'"]),
    ("wrong type", {"optim": {"lr": "fast"}}, ["optim.lr", "expected float", "'fast'"]),
    ("unknown strategy", {"model": {"fusion": "dynamc"}},
     ["model.fusion", "'dynamc'", "did you mean 'dynamic'", "conv, sa"]),
    ("unknown dataset", {"data": {"name": "cifar1O"}}, ["data.name", "'cifar1O'", "cifar10"]),
    ("unknown backbone", {"model": {"backbone": "resnet5O"}}, ["model.backbone", "resnet50"]),
    ("unknown strategy in the matrix", {"matrix": {"model.fusion": ["conv", "lesa"]}},
     ["model.fusion", "'lesa'", "model.fusion=lesa"]),
    ("empty matrix axis", {"matrix": {"model.fusion": []}}, ["matrix.model.fusion", "non-empty"]),
    ("matrix axis not a list", {"matrix": {"seed": 3}}, ["matrix.seed", "list"]),
    ("repeated matrix value", {"matrix": {"seed": [1, 1]}}, ["matrix.seed", "repeat"]),
    ("section not a mapping", {"trainer": [1, 2]}, ["trainer", "expected a mapping"]),
    ("non-positive batch", {"data": {"batch_size": 0}}, ["data.batch_size", "positive"]),
    ("bad stage numbers", {"model": {"attention_stages": [3, 7]}}, ["attention_stages", "1-4"]),
    ("bad window", {"model": {"window": -2}}, ["model.window", "-2", "window size"]),
    ("dataset option of another dataset", {"data": {"name": "digits", "train": {}}},
     ["data.train", "unknown key"]),
]


@pytest.mark.parametrize("what,content,pieces", BAD, ids=[b[0] for b in BAD])
def test_bad_experiment_files_fail_with_a_clear_message(tmp_path, capsys, what, content, pieces):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"name": "bad", **content}))
    code = main(["run", str(path), "--dry-run", "--results", str(tmp_path / "r")])
    out = capsys.readouterr()
    text = " ".join((out.out + out.err).split())
    assert code == 2
    assert "Traceback" not in text
    for piece in pieces:
        assert piece in text, f"{what}: {piece!r} not in {text!r}"
    assert not (tmp_path / "r").exists()  # nothing ran, nothing written


@pytest.mark.parametrize("args,pieces", [
    (["--set", "trainer.max_epochs"], ["--set", "KEY=VALUE"]),
    (["--shard", "2/2"], ["--shard", "0 <= I < N"]),
    (["--shard", "x"], ["--shard", "I/N"]),
    (["--only", "nosuch.key=1"], ["--only nosuch.key", "not a config key"]),
])
def test_bad_command_line_options(tmp_path, capsys, args, pieces):
    code = main(["run", str(ROOT / "experiments" / "quick.yaml"), "--dry-run", *args])
    text = " ".join(capsys.readouterr().out.split())
    assert code == 2 and "Traceback" not in text
    for piece in pieces:
        assert piece in text


def test_missing_and_invalid_files(tmp_path, capsys):
    assert main(["run", str(ROOT / "experiments" / "quikc.yaml"), "--dry-run"]) == 2
    assert "did you mean 'quick.yaml'" in capsys.readouterr().out
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: x\nmodel: [unclosed\n")
    assert main(["run", str(broken), "--dry-run"]) == 2
    assert "not valid YAML" in capsys.readouterr().out
    with pytest.raises(ConfigError):  # --debug lets the exception through
        main(["--debug", "run", str(broken), "--dry-run"])


@pytest.mark.parametrize("name", ["quick", "digits", "cifar100_r50", "imagenet_r50"])
def test_shipped_experiments_build_every_run(name):
    """The GPU-scale files expand and every strategy's model builds (no data, no training)."""
    exp = load_experiment(ROOT / "experiments" / f"{name}.yaml")
    # the controls of `dynamic` run in the probes, which leave out sum and softmax (CPU budget)
    left_out = ({"sum", "softmax"} if name == "quick" else {"static", "dynamic_frozen"})
    assert {r.config["model"]["fusion"] for r in exp.runs} == set(lesa.FUSIONS) - left_out
    built = set()
    for run in exp.runs:
        m = run.config["model"]
        key = m["fusion"]
        if key in built:
            continue
        built.add(key)
        model = lesa.build_backbone(m["backbone"], fusion=m["fusion"], num_classes=10,
                                    heads=m["heads"], output_stride=m["output_stride"],
                                    max_map_size=m["max_size"], stem=m["stem"])
        n_attention = sum(isinstance(x, lesa.Fusion) and x.name != "conv"
                          for x in model.modules())
        assert n_attention == (0 if key == "conv" else
                               8 if m["backbone"] == "resnet50" else n_attention)
    if name not in ("quick", "digits"):  # the CPU-sized files have their own recipes
        recipe = exp.runs[0].config["optim"]
        assert (recipe["lr"], recipe["lr_batch"], recipe["weight_decay"],
                recipe["warmup_epochs"], recipe["nesterov"]) == (0.05, 128, 8e-5, 5, True)


def _numeric_leaves(cfg: dict, prefix: str = ""):
    for key, value in cfg.items():
        if isinstance(value, dict) and value:
            yield from _numeric_leaves(value, f"{prefix}{key}.")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            yield f"{prefix}{key}", value


@pytest.mark.parametrize("dataset", sorted(config.choices()["data.name"]))
def test_every_numeric_key_has_a_range_checked_at_load(dataset):
    """A class of mistake, not one key: every number of every dataset's config refuses -1 (and
    NaN where it is a float), naming the key, before anything is built."""
    from bench.config.checks import NULLABLE

    keys = dict(_numeric_leaves(config.schema_for(dataset)))
    keys.update({k: 1 for k, kind in NULLABLE.items() if kind in (int, float)
                 and k.split(".")[0] != "data" and (dataset in ("coco", "digit_scenes")
                                                    or not k.startswith("model.detection"))})
    assert len(keys) > 20
    for key, default in keys.items():
        for bad in (-1, float("nan")) if isinstance(default, float) else (-1,):
            raw = {"data": {"name": dataset}}
            config.set_dotted(raw, key, bad)
            with pytest.raises(ConfigError, match=re.escape(key)):
                resolve_raw = config.resolve(raw)
                pytest.fail(f"{key}: {bad} accepted: {resolve_raw}")


def test_keys_written_twice_are_refused_in_files_and_in_set_values(tmp_path):
    path = tmp_path / "twice.yaml"
    path.write_text("name: twice\nmodel:\n  fusion: conv\n  heads: 2\n  fusion: sa\n")
    with pytest.raises(ConfigError, match=r"twice.yaml: line 5: key 'fusion' appears twice "
                                          r"in one mapping \(first on line 3\)"):
        load_experiment(path)
    # a merge key (<<: *anchor) may be overridden: not a key written twice
    path.write_text("name: twice\nx: &m {heads: 2, max_size: 16}\nmodel: {<<: *m, heads: 4}\n")
    with pytest.raises(ConfigError, match="x: unknown top-level key"):
        load_experiment(path)
    path.write_text("name: twice\nmodel: {heads: 2}\n")
    with pytest.raises(ConfigError, match=r"--set model=\{heads: 2, heads: 4\}: key 'heads'"):
        load_experiment(path, ["model={heads: 2, heads: 4}"])


def test_set_of_a_mapping_on_a_section_sets_its_keys_and_keeps_the_others(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("name: x\nmodel: {heads: 2, max_size: 16}\n"
                    "matrix: {model.fusion: [conv, dynamic], seed: [0, 1]}\n")
    exp = load_experiment(path, ["model={fusion: sa, window: {4: 2}}"])
    assert {(r.config["model"]["fusion"], r.config["model"]["heads"]) for r in exp.runs} == \
        {("sa", 2)} and len(exp.runs) == 2  # the fusion axis collapsed, seeds kept
    with pytest.raises(ConfigError, match="--set model=5: model: expected a mapping"):
        load_experiment(path, ["model=5"])


def test_only_refuses_what_selects_nothing(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("name: x\nmatrix:\n  task:\n    - {model.fusion: conv, seed: 0}\n"
                    "    - {model.fusion: sa, seed: 1}\n")
    assert len(load_experiment(path, only=["model.fusion=sa", "seed=1"]).runs) == 1
    with pytest.raises(ConfigError, match="no run matches all of these together"):
        load_experiment(path, only=["model.fusion=sa", "seed=0"])
    with pytest.raises(ConfigError, match=r"no run has seed = 3; this matrix has 0, 1"):
        load_experiment(path, only=["seed=3"])
    with pytest.raises(ConfigError, match=r"not a config key \(did you mean 'optim.lr'\?\)"):
        load_experiment(path, only=["optim.lrr=1"])
