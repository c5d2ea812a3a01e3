"""The catalogue of bad inputs: each one through the real command line, one by one.

CATALOGUE below is the single list of cases; docs/bad-inputs.md lists the same ids with the
message each gets (`python tests/test_catalogue.py` prints the observed messages as Markdown,
for updating the docs). Every case must give a clear message that names the bad input and says
what to do, the documented exit code (non-zero except where the suite repairs the input itself),
no traceback (tracebacks only with --debug), and leave a finished run beside it untouched.

Most cases run `bench.cli.main` in-process (it returns the exit code); the signal cases run
`python -m bench.cli` in a subprocess that delivers a real SIGINT to itself at a chosen moment.
"""
from __future__ import annotations

import json
import os
import pickle
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from conftest import TINY, image_tree  # noqa: E402

# fast training settings for the cases that get as far as training
QUICK_TRAINER = {"max_epochs": 1, "limit_train_batches": 1, "limit_val_batches": 1,
                 "limit_test_batches": 1}


# ---------------------------------------------------------------------------------------------
# the workspace every case starts from: an experiment folder with one finished run in it


class Workspace:
    """tmp folder with results/tiny/<finished run>; cases write their bad inputs next to it."""

    def __init__(self, root: Path):
        self.root = root
        self.results = root / "results"
        self.finished = self._finished_run()

    def experiment(self, name: str = "tiny", raw: dict | None = None, replace: tuple = (),
                   **sections) -> Path:
        """TINY (one run: conv, seed 1) with sections updated (the `replace`d ones replaced);
        raw replaces the whole file."""
        if raw is None:
            cfg = yaml.safe_load(yaml.safe_dump(TINY))
            cfg["matrix"] = {"model.fusion": ["conv"], "seed": [1]}
            for key, value in sections.items():
                if isinstance(value, dict) and isinstance(cfg.get(key), dict) \
                        and key not in ("matrix", *replace):
                    cfg[key].update(value)
                else:
                    cfg[key] = value
            text = yaml.safe_dump(cfg)
        else:
            text = raw if isinstance(raw, str) else yaml.safe_dump(raw)
        path = self.root / f"{name}.yaml"
        path.write_text(text)
        return path

    def run_argv(self, exp: Path, *extra: str) -> list[str]:
        return ["run", str(exp), "--results", str(self.results), *extra]

    def _finished_run(self) -> Path:
        """A finished run of the tiny experiment (conv, seed 0), as the runner leaves one."""
        from bench.config import experiment_from_dict
        from bench.store import RunDir

        cfg = yaml.safe_load(yaml.safe_dump(TINY))
        cfg["matrix"] = {"model.fusion": ["conv"], "seed": [0]}
        (run,) = experiment_from_dict(cfg).runs
        rd = RunDir(self.results / "tiny" / run.id)
        rd.create(run.config)
        rd.write_metrics({"test": {"test/acc1": 0.5}, "epochs": 1, "costs": {"params": 1},
                          "shares": None})
        rd.update_status(state="done", attempts=1, elapsed_s=1.0)
        rd.checkpoints.mkdir()
        (rd.checkpoints / "last.ckpt").write_bytes(b"finished run's checkpoint")
        (rd.checkpoints / "best.ckpt").write_bytes(b"finished run's best checkpoint")
        (rd.path / "logs").mkdir()
        (rd.path / "logs" / "metrics.csv").write_text("epoch,val/acc1\n0,0.5\n")
        return rd.path

    def snapshot(self) -> dict[str, bytes]:
        return {str(p.relative_to(self.finished)): p.read_bytes()
                for p in sorted(self.finished.rglob("*")) if p.is_file()}


# --- data builders ----------------------------------------------------------------------------


def imagefolder_exp(ws: Workspace, root: Path) -> Path:
    return ws.experiment(data={"name": "imagefolder", "root": str(root), "image_size": 16,
                               "batch_size": 4, "augment": False}, trainer=QUICK_TRAINER)


def cifar_folder(root: Path, labels_fn=lambda b, i: (b + i) % 10) -> Path:
    import numpy as np

    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)

    def dump(name, labels):
        data = np.repeat(np.array(labels, dtype=np.int64)[:, None] % 256, 3072, axis=1)
        with open(folder / name, "wb") as f:
            pickle.dump({"labels": list(labels), "data": data.astype(np.uint8)}, f)

    for b in range(1, 6):
        dump(f"data_batch_{b}", [labels_fn(b, i) for i in range(4)])
    dump("test_batch", [i % 10 for i in range(4)])
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, f)
    return folder


def cifar_exp(ws: Workspace, root: Path | None) -> Path:
    data = {"name": "cifar10", "batch_size": 4, "augment": False, "image_size": 16}
    if root is not None:
        data["root"] = str(root)
    return ws.experiment(data=data, trainer=QUICK_TRAINER)


def coco_folder(root: Path, train_annotations=None, corrupt_image: bool = False) -> Path:
    """A tiny COCO dataset: train (2 images) and val (1 image), 32x32 PNGs, categories 3 and 7."""
    from PIL import Image

    anns = train_annotations if train_annotations is not None else \
        [{"id": 1, "image_id": 1, "bbox": [2, 2, 10, 10], "category_id": 3}]
    for split, names, split_anns in (
            ("train", ["a.png", "b.png"], anns),
            ("val", ["c.png"], [{"id": 100, "image_id": 1, "bbox": [2, 2, 10, 10],
                                 "category_id": 7}])):
        (root / split).mkdir(parents=True, exist_ok=True)
        (root / "annotations").mkdir(exist_ok=True)
        for i, name in enumerate(names):
            Image.new("RGB", (32, 32), (i * 60, 80, 120)).save(root / split / name)
        images = [{"id": i, "file_name": n, "width": 32, "height": 32}
                  for i, n in enumerate(names, 1)]
        (root / "annotations" / f"{split}.json").write_text(json.dumps({
            "images": images, "annotations": split_anns,
            "categories": [{"id": 3, "name": "car"}, {"id": 7, "name": "bus"}]}))
    if corrupt_image:
        (root / "val" / "c.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    return root


def coco_exp(ws: Workspace, root: Path) -> Path:
    return ws.experiment(data={"name": "coco", "root": str(root), "batch_size": 2},
                         replace=("data",),
                         model={"backbone": "resnet_tiny", "heads": 2, "max_size": 32},
                         trainer=QUICK_TRAINER)


def bad_box(bbox, category=3):
    return [{"id": 12, "image_id": 1, "bbox": bbox, "category_id": category}]


def interrupted_run(ws: Workspace, exp: Path, checkpoint: bytes) -> Path:
    """The experiment's run folder as an interrupted run leaves it, with this last.ckpt."""
    from bench.config import load_experiment
    from bench.store import RunDir

    (run,) = load_experiment(exp).runs
    rd = RunDir(ws.results / "tiny" / run.id)
    rd.create(run.config)
    rd.update_status(state="interrupted", attempts=1, error="interrupted (Ctrl-C or SIGTERM)")
    rd.checkpoints.mkdir()
    rd.last_checkpoint.write_bytes(checkpoint)
    return rd.last_checkpoint


def truncated_checkpoint() -> bytes:
    import io

    import torch

    buf = io.BytesIO()
    torch.save({"epoch": 0, "global_step": 3, "state_dict": {"w": torch.zeros(64, 64)}}, buf)
    return buf.getvalue()[: len(buf.getvalue()) // 2]


# ---------------------------------------------------------------------------------------------
# the catalogue


@dataclass(frozen=True)
class Case:
    id: str
    area: str
    description: str
    # (workspace) -> (argv, the input's name/path the message must contain)
    setup: Callable[[Workspace], tuple[list[str], str]]
    expect: str  # a fragment of the message (whitespace-insensitive)
    code: int = 2
    slow: bool = False
    # "training" | "validation" | "test" [":TERM"]: SIGINT (SIGTERM) there, in a subprocess
    signal_at: str | None = None
    absent: tuple[str, ...] = ()  # fragments the output must not hold (a raw Python warning)
    # (ws, argv) -> (exit code, output): the command run in a subprocess whose output is piped,
    # closed or whose parent is killed (issue 33 item 4), instead of in this process
    process: Callable | None = None
    # (ws, named, output) -> None: what the case must leave behind, asserted after it
    after: Callable | None = None


def _exp_case(content: dict | str, named: str):
    def setup(ws):
        exp = ws.experiment(raw=content if isinstance(content, str) else {"name": "tiny", **content})
        return ws.run_argv(exp), named
    return setup


def _cli_case(*extra: str, named: str):
    def setup(ws):
        return ws.run_argv(ws.experiment(), *extra), named
    return setup


def _data_case(build: Callable[[Workspace], tuple[Path, str]]):
    def setup(ws):
        exp, named = build(ws)
        return ws.run_argv(exp), named
    return setup


def _missing_experiment(ws):
    ws.experiment()  # tiny.yaml exists beside it: the message suggests it
    return ws.run_argv(ws.root / "tinyy.yaml"), "tinyy.yaml"


def _unwritable(ws):
    blocker = ws.root / "not-a-folder"
    blocker.write_text("a file where the results folder should be")
    return ["run", str(ws.experiment()), "--results", str(blocker / "results")], \
        str(blocker / "results")


def _if_missing_root(ws):
    return imagefolder_exp(ws, ws.root / "no-such-data"), str(ws.root / "no-such-data")


def _if_empty(ws):
    (ws.root / "empty").mkdir()
    return imagefolder_exp(ws, ws.root / "empty"), str(ws.root / "empty" / "train")


def _if_empty_class(ws):
    root = image_tree(ws.root / "data")
    for f in (root / "val" / "dog").iterdir():
        f.unlink()
    return imagefolder_exp(ws, root), str(root / "val" / "dog")


def _if_unknown_class(ws):
    root = image_tree(ws.root / "data")
    (root / "val" / "dog").rename(root / "val" / "bird")
    return imagefolder_exp(ws, root), str(root / "val")


def _if_corrupt_image(ws):
    root = image_tree(ws.root / "data")
    (root / "val" / "cat" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    return imagefolder_exp(ws, root), str(root / "val" / "cat" / "bad.png")


def _cifar_no_root(ws):
    return cifar_exp(ws, None), "data.root"


def _cifar_missing(ws):
    (ws.root / "data").mkdir()
    return cifar_exp(ws, ws.root / "data"), str(ws.root / "data" / "cifar-10-batches-py")


def _cifar_incomplete(ws):
    folder = cifar_folder(ws.root / "data")
    (folder / "data_batch_3").unlink()
    return cifar_exp(ws, ws.root / "data"), "data_batch_3"


def _cifar_corrupt(ws):
    folder = cifar_folder(ws.root / "data")
    (folder / "data_batch_2").write_bytes(b"\x80\x04\x95 truncated pickle")
    return cifar_exp(ws, ws.root / "data"), str(folder / "data_batch_2")


def _cifar_bad_label(ws):
    folder = cifar_folder(ws.root / "data", labels_fn=lambda b, i: 12 if (b, i) == (3, 1) else i)
    return cifar_exp(ws, ws.root / "data"), str(folder)


def _coco(annotations=None, named=None, corrupt_image=False, edit=None):
    def build(ws):
        root = coco_folder(ws.root / "coco", annotations, corrupt_image)
        if edit:
            edit(root)
        return coco_exp(ws, root), named(root)
    return build


def _ckpt_case(data: Callable[[], bytes]):
    def setup(ws):
        exp = ws.experiment(trainer=QUICK_TRAINER)
        path = interrupted_run(ws, exp, data())
        return ws.run_argv(exp), str(path)
    return setup


def _signal_case(ws):
    exp = ws.experiment(trainer={"max_epochs": 2, "limit_train_batches": 3,
                                 "limit_val_batches": 2, "limit_test_batches": 2})
    from bench.config import load_experiment

    (run,) = load_experiment(exp).runs
    return ws.run_argv(exp), run.id


# --- cases added with issue 25: every value checked at load, inputs never misread ------------


def _dry_case(named: str, **sections):
    """TINY with these sections updated, through `run --dry-run`: refused at load."""
    def setup(ws):
        return ws.run_argv(ws.experiment(**sections), "--dry-run"), named
    return setup


def _text_case(text: str, named: str):
    def setup(ws):
        return ws.run_argv(ws.experiment(raw=text), "--dry-run"), named
    return setup


def _argv_case(*extra: str, named: str, command: str = "run", dry: bool = True):
    def setup(ws):
        argv = [command, str(ws.experiment()), "--results", str(ws.results), *extra]
        return argv + (["--dry-run"] if dry and command == "run" else []), named
    return setup


def _models_case(*extra: str, named: str):
    return lambda ws: (["models", "--backbone", "resnet_tiny", *extra], named)


def _report_case(*extra, named: Callable[[Workspace], str]):
    """`report` of the tiny experiment; extra may hold callables (ws -> a path argument)."""
    def setup(ws):
        args = [a(ws) if callable(a) else a for a in extra]
        return ["report", str(ws.experiment()), "--results", str(ws.results), *args], named(ws)
    return setup


def _folder(ws):
    (ws.root / "out").mkdir(exist_ok=True)
    return str(ws.root / "out")


def _under_a_file(name):
    def path(ws):
        (ws.root / "a-file").write_text("a file where a folder should be")
        return str(ws.root / "a-file" / name)
    return path


def _bundle_collapse(ws):
    exp = ws.experiment(matrix={"task": [{"model.fusion": "conv"}, {"model.fusion": "sa"}],
                                "seed": [1]})
    return ws.run_argv(exp, "--set", "model.fusion=sa", "--dry-run"), "model.fusion=sa"


def _link_case(make_link, named):
    """An ImageFolder tree with a link made by make_link(root) -> the path the message names."""
    def build(ws):
        root = image_tree(ws.root / "data")
        return imagefolder_exp(ws, root), named(make_link(root))
    return _data_case(build)


def _link(at: Path, to: Path) -> Path:
    at.symlink_to(to, target_is_directory=to.is_dir())
    return at


def _float_image(ws):
    import numpy as np
    from PIL import Image

    root = image_tree(ws.root / "data")
    Image.fromarray(np.full((12, 10), 7.5, np.float32)).save(root / "val" / "cat" / "f.tif")
    return imagefolder_exp(ws, root), str(root / "val" / "cat" / "f.tif")


def _coco_images(edit_json):
    """The tiny COCO folder with its train.json edited by edit_json(dict)."""
    def edit(root):
        path = root / "annotations" / "train.json"
        data = json.loads(path.read_text())
        edit_json(data)
        path.write_text(json.dumps(data))
    return _coco(edit=edit, named=lambda r: str(r / "annotations" / "train.json"))


def _oom(ws):
    # 1e7 px a side: more than any address space, so the allocation fails on every machine
    exp = ws.experiment(data={"image_size": 10_000_000, "batch_size": 2}, trainer=QUICK_TRAINER)
    return ws.run_argv(exp), "data.image_size"


def _coco_clipped(ws):
    root = coco_folder(ws.root / "coco", bad_box([25, 3, 10, 5]))
    return ws.run_argv(coco_exp(ws, root)), str(root / "annotations" / "train.json")


# --- issue 33: one image, one label, one split; a run whose validation diverged --------------


def _tree_with(edit, named, classes=("cat", "dog")):
    """An ImageFolder tree edited by edit(root) -> the path the message must name."""
    def build(ws):
        root = image_tree(ws.root / "data", classes=classes)
        return imagefolder_exp(ws, root), named(edit(root))
    return _data_case(build)


def _relink(at: Path, to: Path) -> Path:
    import shutil

    shutil.rmtree(at)
    return _link(at, to)


# --- issue 33 (items 8-11, 18): models, numbers, SLURM options and memory, before any run ------


def _model_case(named: str, dry: bool = False, **model):
    """TINY on one attention strategy with these model keys: refused before anything trains."""
    def setup(ws):
        exp = ws.experiment(model=model, matrix={"model.fusion": ["dynamic"], "seed": [1]},
                            trainer=QUICK_TRAINER)
        return ws.run_argv(exp, *(["--dry-run"] if dry else [])), named
    return setup


def _slurm_case(*extra: str, named):
    """`slurm --dry-run` of the tiny experiment with these options; named: text or ws -> text."""
    def setup(ws):
        argv = ["slurm", str(ws.experiment()), "--results", str(ws.results), "--dry-run"]
        return argv + [e(ws) if callable(e) else e for e in extra], \
            named(ws) if callable(named) else named
    return setup


def _spaced_results(ws):
    """A results folder beside the workspace's, with a space, a # and a % in its name."""
    return str(ws.root / "my results #1 100%")


def _scenes_exp(ws, **data):
    return ws.experiment(data={"name": "digit_scenes", "train_images": 4, "val_images": 2,
                               "test_images": 2, **data}, replace=("data",),
                         trainer=QUICK_TRAINER)


# --- issue 33 (items 12-16): what a report compares ------------------------------------------


def _compare_case(*extra: str, named: str, **axes):
    """`report` of the tiny experiment whose matrix has these axes besides the seed."""
    def setup(ws):
        exp = ws.experiment(matrix={"model.fusion": ["conv", "dynamic"], **axes, "seed": [1]})
        return ["report", str(exp), "--results", str(ws.results), *extra], named
    return setup


# --- issue 33 (items 4-7, 16): output readers gone, report outputs, trackers, stops ---------


def _the_run(ws, exp) -> str:
    from bench.config import load_experiment

    (run,) = load_experiment(exp).runs
    return run.id


def _long_run(ws, **trainer):
    """The tiny experiment's run, long enough to be stopped while it trains -> (argv, its id)."""
    exp = ws.experiment(trainer={"max_epochs": 4, "limit_train_batches": 4,
                                 "limit_val_batches": 1, "limit_test_batches": 1, **trainer})
    return ws.run_argv(exp), _the_run(ws, exp)


def _popen(argv, own_group=False, stderr=subprocess.PIPE, env=None):
    def start():  # as a terminal's foreground job: Ctrl-C reaches the whole group
        if own_group:
            os.setpgid(0, 0)
        import signal
        signal.signal(signal.SIGINT, signal.SIG_DFL)
    return subprocess.Popen([sys.executable, "-m", "bench.cli", *argv], cwd=ROOT,
                            env={**(env or os.environ), "PYTHONUNBUFFERED": "1"},
                            stdout=subprocess.PIPE, stderr=stderr, preexec_fn=start)


def _until(predicate, proc=None, timeout=300.0) -> None:
    """Wait for predicate(), while `proc` runs."""
    import time

    end = time.time() + timeout
    while not predicate():
        if (proc is not None and proc.poll() is not None) or time.time() > end:
            raise AssertionError(f"gave up waiting (exit {proc and proc.poll()})")
        time.sleep(0.05)


def _training(ws, run_id):
    """The run trains past its first epoch, with a checkpoint."""
    from bench.store import RunDir

    rd = RunDir(ws.results / "tiny" / run_id)
    return lambda: rd.last_checkpoint.exists() and rd.status().get("epoch", 0) >= 1


def _head_2(ws, argv):
    """`lesa-bench run EXP | head -2`: two lines read, then the pipe closed."""
    proc = _popen(argv)
    for _ in range(2):
        proc.stdout.readline()
    proc.stdout.close()
    err = proc.stderr.read().decode()
    return proc.wait(timeout=300), err


def _ctrl_c_tee_gone(ws, argv):
    """`lesa-bench run EXP | tee log`, Ctrl-C: the key press ends tee too (stderr: a terminal)."""
    import signal

    proc = _popen(argv, own_group=True)
    _until(_training(ws, argv_run_id(argv, ws)), proc)
    proc.stdout.close()
    os.killpg(proc.pid, signal.SIGINT)
    err = proc.stderr.read().decode()
    return proc.wait(timeout=300), err


def argv_run_id(argv, ws) -> str:
    return _the_run(ws, Path(argv[1]))


def _rerun(ws, argv):
    proc = subprocess.run([sys.executable, "-m", "bench.cli", *argv], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    return proc.returncode, proc.stdout + proc.stderr


def _jobs_parent_killed(ws, argv):
    """kill -9 of `run --jobs 2`'s parent while its worker trains; then the same command."""
    import signal

    from bench.store import RunDir

    run_id = argv_run_id(argv, ws)
    proc = _popen([*argv, "--jobs", "2"], own_group=True, stderr=subprocess.STDOUT)
    _until(_training(ws, run_id), proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    rd = RunDir(ws.results / "tiny" / run_id)
    _until(lambda: rd.status().get("state") != "running" and not (rd.path / "lock").exists(),
           timeout=120)
    assert rd.status()["state"] == "interrupted", rd.status()  # not running, not failed
    return _rerun(ws, argv)


def _killpoint_run(spec):
    """The run stopped from inside at `spec` (tests/killpoints.py) -> (exit code, output)."""
    import killpoints

    def process(ws, argv):
        import signal

        proc = subprocess.run([sys.executable, "-m", "bench.cli", *argv], cwd=ROOT,
                              env=killpoints.env(spec), capture_output=True, text=True,
                              timeout=600, preexec_fn=lambda: signal.signal(signal.SIGINT,
                                                                            signal.SIG_DFL))
        return proc.returncode, proc.stdout + proc.stderr
    return process


def _then_rerun(first):
    """`first`, then the same command again -> the second's (exit code, output)."""
    def process(ws, argv):
        first(ws, argv)
        return _rerun(ws, argv)
    return process


def _left(state, resumes=True):
    """After the case: the run is in `state`, unlocked; with `resumes`, a plain re-run resumes
    it to the end (before, a run failed by a closed pipe was refused)."""
    def after(ws, named, out):
        from bench.store import RunDir

        rd = RunDir(ws.results / "tiny" / named)
        assert rd.status()["state"] == state, rd.status()
        assert not (rd.path / "lock").exists()
        if resumes:
            code, again = _rerun(ws, ws.run_argv(ws.root / "tiny.yaml"))
            assert code == 0 and f"resuming {named}" in again, again
            assert rd.status()["state"] == "done"
    return after


def _trackers_exact(ws, named, out):
    from test_loggers import assert_trackers_match_the_csv_log

    from bench.store import RunDir

    assert_trackers_match_the_csv_log(RunDir(ws.results / "tiny" / named))


def _output_link(ws):
    target, link = ws.root / "kept" / "report.md", ws.root / "latest.md"
    if not link.is_symlink():
        target.parent.mkdir()
        target.write_text("old report\n")
        link.symlink_to(target)
    return str(link)


def _link_written_through(ws, named, out):
    link = Path(named)
    assert link.is_symlink() and (ws.root / "kept" / "report.md").read_text() != "old report\n"


def _output_fifo(ws):
    import threading

    fifo = ws.root / "report.csv"
    if not fifo.exists():
        os.mkfifo(fifo)
        ws.fifo_read = []
        threading.Thread(target=lambda: ws.fifo_read.append(fifo.read_text()),
                         daemon=True).start()
    return str(fifo)


def _fifo_written_into(ws, named, out):
    import stat
    import time

    end = time.time() + 30
    while not ws.fifo_read and time.time() < end:
        time.sleep(0.05)
    assert stat.S_ISFIFO(os.stat(named).st_mode), "the FIFO was replaced"
    assert ws.fifo_read and ws.fifo_read[0].startswith("strategy,dataset"), ws.fifo_read


def _still_a_device(ws, named, out):
    import stat

    assert stat.S_ISCHR(os.stat(named).st_mode)


def _missing_folder(ws):
    return str(ws.root / "no" / "such" / "report.html")


def _no_folder_made(ws, named, out):
    assert not (ws.root / "no").exists()


def _link_loop(ws):
    loop = ws.root / "loop.md"
    if not loop.is_symlink():
        loop.symlink_to(loop)
    return str(loop)


def _mlflow_exp(ws, uri, *extra):
    exp = ws.experiment(trainer={**QUICK_TRAINER, "loggers": ["csv", "mlflow"],
                                 "mlflow_uri": uri})
    return ws.run_argv(exp, *extra), uri


def _no_run_folder(ws, named, out):
    from bench.config import load_experiment

    (run,) = load_experiment(ws.root / "tiny.yaml").runs
    assert not (ws.results / "tiny" / run.id).exists()


def _trackers_case(ws):
    exp = ws.experiment(trainer={"loggers": ["csv", "tensorboard", "mlflow"], "max_epochs": 2,
                                 "limit_train_batches": 6, "limit_val_batches": 1,
                                 "limit_test_batches": 1, "checkpoint_every_n_steps": 3,
                                 "log_every_n_steps": 1})
    return ws.run_argv(exp), _the_run(ws, exp)


def _twice_case(ws):
    exp = ws.experiment(trainer={"max_epochs": 2, "limit_train_batches": 3,
                                 "limit_val_batches": 2, "limit_test_batches": 1,
                                 "checkpoint_every_n_steps": 2})
    return ws.run_argv(exp), _the_run(ws, exp)


def _jobs_failed(ws):
    exp = ws.experiment(data={"image_size": 10_000_000, "batch_size": 2}, trainer=QUICK_TRAINER)
    return ws.run_argv(exp), _the_run(ws, exp)


def _jobs_run(ws, argv):
    return _rerun(ws, [*argv, "--jobs", "2"])


def _summary_once(ws, named, out):
    assert out.count(f"failed {named}:") == 1, out  # the parent's list
    assert out.count("all workers finished") == 1, out
    assert "to run ->" not in out and "left to other processes" not in out, out  # workers'


_TRAIN_HINT = "run the same command to resume it"

# --- issue 36: plugins (bench/plugins.py, docs/plugins.md) ------------------------------------

SCALAR_GATE = ROOT / "examples" / "plugins" / "scalar_gate.py"
PLUGIN_HEAD = ("import torch\nfrom torch import nn\n\n"
               "from lesa.fusion import AttentionFusion, register\n")
BROKEN_GATE = PLUGIN_HEAD + """

@register("broken_gate")
class BrokenGate(AttentionFusion):
    def __init__(self, channels, *, heads=8, stride=1, max_map_size=64):
        super().__init__(channels, heads=heads, stride=stride, max_map_size=max_map_size)
        self.alpha = nn.Parameter(torch.zeros(()))  # no reset_parameters()
        self.unused = nn.Linear(channels, channels)  # never in forward

    def fuse(self, x):
        y = self.unary(x) + self.alpha.exp() * self.binary(x) + 0.01 * torch.rand_like(x)
        return y.float(), 1.5
"""
FLAKY = PLUGIN_HEAD + """

@register("flaky")
class Flaky(AttentionFusion):
    def fuse(self, x):
        if torch.is_grad_enabled():  # the model check before training runs without gradients
            raise RuntimeError("flaky: the context term is not ready for training")
        return self.unary(x) + self.binary(x), 0.5
"""


def _plugin_case(files: dict, listed: list, named, fusions=("conv",), model=None,
                 dry: bool = True):
    """The tiny experiment (seed 1) listing `plugins: listed`, with `files` written beside it
    (a None text: a copy of examples/plugins/scalar_gate.py)."""
    def setup(ws):
        for name, text in files.items():
            (ws.root / name).write_text(SCALAR_GATE.read_text() if text is None else text)
        sections = {"model": model} if model else {}
        exp = ws.experiment(plugins=listed, matrix={"model.fusion": list(fusions), "seed": [1]},
                            trainer=QUICK_TRAINER, **sections)
        return ws.run_argv(exp, *(["--dry-run"] if dry else [])), named
    return setup


def _check_plugin_case(files: dict, source: str, named: str):
    def setup(ws):
        for name, text in files.items():
            (ws.root / name).write_text(text)
        return ["check-plugin", str(ws.root / source) if files else source], named
    return setup


CATALOGUE: list[Case] = [
    # --- experiment files ---------------------------------------------------------------------
    Case("exp-unknown-key", "experiment file", "a misspelt key (model.fusoin)",
         _exp_case({"model": {"fusoin": "sa"}}, "model.fusoin"),
         "unknown key (did you mean 'fusion'?)"),
    Case("exp-unknown-top-level-key", "experiment file", "a misspelt section (matrx)",
         _exp_case({"matrx": {"seed": [0]}}, "matrx"), "unknown top-level key"),
    Case("exp-wrong-type", "experiment file", "a string where a number belongs (optim.lr: fast)",
         _exp_case({"optim": {"lr": "fast"}}, "optim.lr"), "expected float, got string 'fast'"),
    Case("exp-section-not-mapping", "experiment file", "a section that is a list (trainer: [1, 2])",
         _exp_case({"trainer": [1, 2]}, "trainer"), "expected a mapping, got list"),
    Case("exp-unknown-strategy", "experiment file", "an unknown fusion strategy (dynamc)",
         _exp_case({"model": {"fusion": "dynamc"}}, "model.fusion"),
         "'dynamc' is not allowed (did you mean 'dynamic'?)"),
    Case("exp-unknown-dataset", "experiment file", "an unknown dataset (cifar1O)",
         _exp_case({"data": {"name": "cifar1O"}}, "data.name"), "'cifar1O' is not allowed"),
    Case("exp-unknown-backbone", "experiment file", "an unknown backbone (resnet5O)",
         _exp_case({"model": {"backbone": "resnet5O"}}, "model.backbone"),
         "'resnet5O' is not allowed"),
    Case("exp-matrix-unknown-value", "experiment file", "an unknown strategy in a matrix axis",
         _exp_case({"matrix": {"model.fusion": ["conv", "lesa"]}}, "model.fusion"),
         "(in the matrix run model.fusion=lesa)"),
    Case("exp-matrix-empty-axis", "experiment file", "an empty matrix axis",
         _exp_case({"matrix": {"model.fusion": []}}, "matrix.model.fusion"),
         "expected a non-empty list of values"),
    Case("exp-matrix-axis-not-list", "experiment file", "a matrix axis that is not a list",
         _exp_case({"matrix": {"seed": 3}}, "matrix.seed"), "expected a non-empty list"),
    Case("exp-matrix-repeated-value", "experiment file", "a matrix axis that repeats a value",
         _exp_case({"matrix": {"seed": [1, 1]}}, "matrix.seed"), "values repeat"),
    Case("exp-matrix-bad-bundle", "experiment file",
         "a bundle axis whose values are not mappings of dotted keys",
         _exp_case({"matrix": {"task": ["digits"]}}, "matrix.task"),
         "not a dotted config key"),
    Case("exp-sweep-bad-space", "experiment file", "a sweep range of the wrong kind",
         _exp_case({"sweep": {"params": {"optim.lr": "fast"}}}, "sweep.params.optim.lr"),
         "expected a list of choices or a mapping with low/high"),
    Case("exp-sweep-unknown-param", "experiment file", "a sweep over a key that does not exist",
         _exp_case({"sweep": {"params": {"optim.lrr": [0.1, 0.2]}}}, "sweep.params.optim.lrr"),
         "not a config key (did you mean 'optim.lr'?)"),
    Case("exp-invalid-yaml", "experiment file", "a file that is not valid YAML",
         _exp_case("name: tiny\nmodel: [unclosed\n", "tiny.yaml"), "not valid YAML"),
    Case("exp-not-a-mapping", "experiment file", "a YAML file holding a list",
         _exp_case("- conv\n- sa\n", "tiny.yaml"), "expected a mapping at the top level"),
    # --- command line -------------------------------------------------------------------------
    Case("cli-missing-experiment", "command line", "an experiment file that does not exist",
         _missing_experiment, "not found (did you mean 'tiny.yaml'?)"),
    Case("cli-set-not-key-value", "command line", "--set without =VALUE",
         _cli_case("--set", "trainer.max_epochs", named="trainer.max_epochs"),
         "expected KEY=VALUE"),
    Case("cli-set-unknown-key", "command line", "--set on a key that does not exist",
         _cli_case("--set", "trainer.max_epoch=2", named="trainer.max_epoch"),
         "unknown key (did you mean 'max_epochs'?)"),
    Case("cli-set-wrong-type", "command line", "--set with a value of the wrong type",
         _cli_case("--set", "data.batch_size=big", named="data.batch_size"),
         "expected int, got string 'big'"),
    Case("cli-shard-out-of-range", "command line", "--shard 2/2 (I must be below N)",
         _cli_case("--shard", "2/2", named="2/2"), "expected I/N with 0 <= I < N"),
    Case("cli-shard-malformed", "command line", "--shard that is not I/N",
         _cli_case("--shard", "first", named="first"), "expected I/N"),
    Case("cli-only-unknown-key", "command line", "--only on a key that does not exist",
         _cli_case("--only", "model.fusoin=sa", named="model.fusoin"), "not a config key"),
    Case("results-unwritable", "results", "a results directory that cannot be created",
         _unwritable, "is not writable"),
    # --- classification data ------------------------------------------------------------------
    Case("imagefolder-missing-root", "data", "data.root that does not exist",
         _data_case(_if_missing_root), "is not a folder"),
    Case("imagefolder-empty-root", "data", "data.root that is an empty folder",
         _data_case(_if_empty), "missing folder"),
    Case("imagefolder-empty-class", "data", "a class folder without images",
         _data_case(_if_empty_class), "no images"),
    Case("imagefolder-unknown-class", "data", "a val class folder that train does not have",
         _data_case(_if_unknown_class), "class folders differ"),
    Case("imagefolder-corrupt-image", "data", "an image file that cannot be decoded",
         _data_case(_if_corrupt_image), "cannot read image", code=1, slow=True),
    Case("cifar-no-root", "data", "cifar10 without data.root", _data_case(_cifar_no_root),
         "data.root is not set"),
    Case("cifar-missing-folder", "data", "data.root without cifar-10-batches-py/",
         _data_case(_cifar_missing), "CIFAR-10 not found"),
    Case("cifar-incomplete", "data", "a CIFAR folder missing one batch file",
         _data_case(_cifar_incomplete), "is incomplete: missing"),
    Case("cifar-corrupt-file", "data", "a CIFAR batch file that is not a pickle",
         _data_case(_cifar_corrupt), "cannot read CIFAR-10 file", code=1, slow=True),
    Case("cifar-unknown-label", "data", "a CIFAR label outside 0..9",
         _data_case(_cifar_bad_label), "has label 12 outside 0..9", code=1, slow=True),
    # --- detection data (coco) ----------------------------------------------------------------
    Case("coco-missing-root", "data", "coco data.root that does not exist",
         _data_case(lambda ws: (coco_exp(ws, ws.root / "nowhere"), str(ws.root / "nowhere"))),
         "is not a folder"),
    Case("coco-missing-annotations", "data", "an annotation file that does not exist",
         _data_case(_coco(edit=lambda r: (r / "annotations" / "val.json").unlink(),
                          named=lambda r: str(r / "annotations" / "val.json"))),
         "not found"),
    Case("coco-corrupt-annotations", "data", "an annotation file that is not valid JSON",
         _data_case(_coco(edit=lambda r: (r / "annotations" / "train.json").write_text(
             '{"images": [\n  {"id": 1,,}]}'), named=lambda r: str(r / "annotations" /
                                                                  "train.json"))),
         "malformed JSON at line 2"),
    Case("coco-not-coco", "data", "a JSON file without images/annotations/categories",
         _data_case(_coco(edit=lambda r: (r / "annotations" / "val.json").write_text("[]"),
                          named=lambda r: str(r / "annotations" / "val.json"))),
         "malformed COCO file"),
    Case("coco-box-outside-image", "data", "a box that lies outside its image",
         _data_case(_coco(bad_box([40, 3, 5, 5]),
                          named=lambda r: str(r / "annotations" / "train.json"))),
         "annotation id 12 (image a.png): box [40, 3, 5, 5] lies outside the 32x32 image"),
    Case("coco-zero-size-box", "data", "a box of zero width",
         _data_case(_coco(bad_box([3, 3, 0, 5]),
                          named=lambda r: str(r / "annotations" / "train.json"))),
         "has a zero-size box"),
    Case("coco-unknown-category", "data", "an annotation whose category is not listed",
         _data_case(_coco(bad_box([3, 3, 4, 5], category=42),
                          named=lambda r: str(r / "annotations" / "train.json"))),
         "unknown category_id 42"),
    Case("coco-missing-image", "data", "an image entry whose file does not exist",
         _data_case(_coco(edit=lambda r: (r / "train" / "a.png").unlink(),
                          named=lambda r: str(r / "train" / "a.png"))),
         "does not exist (annotation ids: 1)"),
    Case("coco-corrupt-image", "data", "an image file that cannot be decoded",
         _data_case(_coco(corrupt_image=True, named=lambda r: str(r / "val" / "c.png"))),
         "cannot read image", code=1, slow=True),
    # --- checkpoints ----------------------------------------------------------------------------
    Case("ckpt-truncated", "checkpoint", "a truncated last.ckpt (disk full, a cut copy)",
         _ckpt_case(truncated_checkpoint), "is unreadable", code=0, slow=True),
    Case("ckpt-corrupt", "checkpoint", "a last.ckpt that is not a checkpoint at all",
         _ckpt_case(lambda: b"garbage, not a checkpoint"), "is unreadable", code=0, slow=True),
    # --- signals --------------------------------------------------------------------------------
    Case("sigint-training", "signal", "Ctrl-C (SIGINT) during a training step",
         _signal_case, _TRAIN_HINT, code=130, slow=True, signal_at="training"),
    Case("sigint-validation", "signal", "Ctrl-C (SIGINT) during validation",
         _signal_case, _TRAIN_HINT, code=130, slow=True, signal_at="validation"),
    Case("sigint-test", "signal", "Ctrl-C (SIGINT) during the final test evaluation",
         _signal_case, _TRAIN_HINT, code=130, slow=True, signal_at="test"),
    Case("sigterm-training", "signal", "SIGTERM (a scheduler's notice) during training",
         _signal_case, _TRAIN_HINT, code=130, slow=True, signal_at="training:TERM"),
    # --- every value checked at load (run --dry-run refuses it) ------------------------------
    Case("exp-duplicate-key", "experiment file", "a section written twice (model: twice)",
         _text_case("name: tiny\nmodel: {fusion: conv}\nseed: 1\nmodel: {heads: 2}\n",
                    "tiny.yaml"), "line 4: key 'model' appears twice in one mapping"),
    Case("exp-duplicate-key-in-matrix", "experiment file", "a matrix axis written twice (seed:)",
         _text_case("name: tiny\nmatrix:\n  seed: [0, 1]\n  model.fusion: [conv]\n"
                    "  seed: [2]\n", "tiny.yaml"), "key 'seed' appears twice"),
    Case("exp-stages-empty", "experiment file",
         "model.attention_stages: [] with an attention strategy (no LESA module at all)",
         _dry_case("model.attention_stages", model={"attention_stages": []},
                   matrix={"model.fusion": ["dynamic"]}),
         "would build a network without a single LESA module"),
    Case("exp-stages-repeated", "experiment file", "a stage listed twice in attention_stages",
         _dry_case("model.attention_stages", model={"attention_stages": [3, 3]}),
         "a stage is listed twice"),
    Case("exp-image-size-zero", "experiment file", "data.image_size: 0",
         _dry_case("data.image_size", data={"image_size": 0}), "must be positive, got 0"),
    Case("exp-image-size-negative", "experiment file", "data.image_size: -5",
         _dry_case("data.image_size", data={"image_size": -5}), "must be positive, got -5"),
    Case("exp-image-size-scenes", "experiment file", "digit_scenes canvases below 32 px",
         _dry_case("data.image_size", data={"name": "digit_scenes", "image_size": 16},
                   replace=("data",)),
         "must be an integer >= 32, got 16"),
    Case("exp-seed-negative", "experiment file", "seed: -1",
         _dry_case("seed", matrix={"model.fusion": ["conv"], "seed": [-1]}),
         "must be an integer >= 0 and <= 4294967295"),
    Case("exp-seed-too-large", "experiment file", "a seed beyond 2^32",
         _dry_case("seed", seed=2**32, matrix={"model.fusion": ["conv"]}),
         "(seeds are unsigned 32-bit numbers), got 4294967296"),
    Case("exp-split-seed-too-large", "experiment file", "data.split_seed beyond 2^32",
         _dry_case("data.split_seed", data={"split_seed": 2**40}), "<= 4294967295"),
    Case("exp-seeds-init-negative", "experiment file", "trainer.seeds.init: [0, -1] as an axis",
         _dry_case("trainer.seeds.init",
                   matrix={"model.fusion": ["conv"], "trainer.seeds.init": [0, -1]}),
         "must be an integer >= 0 and <= 4294967295"),
    Case("exp-seeds-order-float", "experiment file", "trainer.seeds.order: 1.5",
         _dry_case("trainer.seeds.order", trainer={"seeds": {"order": 1.5}}),
         "expected null or an integer, got 1.5"),
    Case("exp-seed-axis-with-finer-seeds", "experiment file",
         "a seed axis over runs that set both trainer.seeds.init and .order",
         _dry_case("matrix.seed", matrix={"model.fusion": ["conv"], "seed": [0, 1],
                                          "trainer.seeds.init": [0, 1],
                                          "trainer.seeds.order": [0]}),
         "so the run seed changes nothing a run computes; keep seed at one value"),
    Case("exp-looks-with-finer-seeds", "experiment file",
         "analysis.looks with trainer.seeds.init as an axis",
         _dry_case("analysis.looks", analysis={"looks": [2, 3]},
                   matrix={"model.fusion": ["conv"], "seed": [0, 1, 2],
                           "trainer.seeds.init": [0, 1]}),
         "a planned sequential design reads the seeds of the seed axis in its order, but "
         "trainer.seeds.init draws them apart here"),
    Case("exp-weight-decay-negative", "experiment file", "optim.weight_decay: -1.0",
         _dry_case("optim.weight_decay", optim={"weight_decay": -1.0}),
         "must be a number >= 0, got -1.0"),
    Case("exp-momentum-one", "experiment file", "optim.momentum: 1.0 (never decays)",
         _dry_case("optim.momentum", optim={"momentum": 1.0}), "a number >= 0 and < 1"),
    Case("exp-lr-not-finite", "experiment file", "optim.lr: .nan",
         _text_case("name: tiny\noptim: {lr: .nan}\n", "optim.lr"),
         "must be a finite number, got nan"),
    Case("exp-label-smoothing", "experiment file", "optim.label_smoothing: 1.0",
         _dry_case("optim.label_smoothing", optim={"label_smoothing": 1.0}), "< 1"),
    Case("exp-warmup-negative", "experiment file", "optim.warmup_epochs: -1",
         _dry_case("optim.warmup_epochs", optim={"warmup_epochs": -1}), "must be a number >= 0"),
    Case("exp-lr-batch-wrong-type", "experiment file", "optim.lr_batch (null by default): 'big'",
         _dry_case("optim.lr_batch", optim={"lr_batch": "big"}), "expected null or an integer"),
    Case("exp-batch-size-zero", "experiment file", "data.batch_size: 0",
         _dry_case("data.batch_size", data={"batch_size": 0}), "must be positive"),
    Case("exp-num-workers-negative", "experiment file", "data.num_workers: -2",
         _dry_case("data.num_workers", data={"num_workers": -2}), "an integer >= 0"),
    Case("exp-fractions-too-large", "experiment file", "val + test fractions of 1 or more",
         _dry_case("data.val_fraction", data={"val_fraction": 0.5, "test_fraction": 0.6}),
         "must be below 1"),
    Case("exp-heads-zero", "experiment file", "model.heads: 0",
         _dry_case("model.heads", model={"heads": 0}), "must be positive"),
    Case("exp-max-epochs-zero", "experiment file", "trainer.max_epochs: 0",
         _dry_case("trainer.max_epochs", trainer={"max_epochs": 0}), "must be positive"),
    Case("exp-limit-batches-above-one", "experiment file", "limit_train_batches: 1.5 (a float)",
         _dry_case("trainer.limit_train_batches", trainer={"limit_train_batches": 1.5}),
         "a float is the fraction of the batches (at most 1.0)"),
    Case("exp-accumulate-zero", "experiment file", "trainer.accumulate_grad_batches: 0",
         _dry_case("trainer.accumulate_grad_batches", trainer={"accumulate_grad_batches": 0}),
         "must be positive"),
    Case("exp-clip-wrong-type", "experiment file", "trainer.gradient_clip_val: '1' (a string)",
         _dry_case("trainer.gradient_clip_val", trainer={"gradient_clip_val": "1"}),
         "expected null or a number, got '1'"),
    Case("exp-precision-unknown", "experiment file", "an unknown trainer.precision (fp16)",
         _dry_case("trainer.precision", trainer={"precision": "fp16"}),
         "'fp16' is not allowed"),
    Case("exp-precision-on-cpu", "experiment file", "16-mixed on the CPU",
         _dry_case("trainer.precision", trainer={"precision": "16-mixed"}),
         "is not supported on the CPU"),
    Case("exp-validation-never", "experiment file", "check_val_every_n_epoch > max_epochs",
         _dry_case("trainer.check_val_every_n_epoch",
                   trainer={"check_val_every_n_epoch": 5, "max_epochs": 2}),
         "validation (which picks the best checkpoint) would never run"),
    Case("exp-bool-as-string", "experiment file", "a flag written as a string (augment: 'false')",
         _dry_case("data.augment", data={"augment": "false"}), "expected bool, got string"),
    Case("exp-root-wrong-type", "experiment file", "data.root: 5 (not a path)",
         _dry_case("data.root", data={"root": 5}), "expected null or a string (a path)"),
    Case("exp-fpn-channels", "experiment file", "model.detection.fpn_channels not a multiple of 32",
         _dry_case("model.detection.fpn_channels", data={"name": "digit_scenes"},
                   replace=("data",), model={"detection": {"fpn_channels": 48}}),
         "must be a multiple of 32"),
    # --- command line: every flag checked, user text printed as typed --------------------------
    Case("cli-set-scalar-on-section", "command line", "--set data=5 (a section set to a number)",
         _argv_case("--set", "data=5", named="data=5"), "data: expected a mapping, got int 5"),
    Case("cli-set-list-echoed", "command line", "--set with a bracketed value, echoed as typed",
         _argv_case("--set", "model.fusion=[conv, sa]", named="model.fusion=[conv, sa]"),
         "['conv', 'sa'] is not allowed"),
    Case("cli-set-section-mapping", "command line",
         "--set model={fusion: sa}: sets model.fusion, keeps the other model keys",
         _argv_case("--set", "model={fusion: sa}", named="sa-digits-s1"), "dry run (1 runs)",
         code=0),
    Case("cli-set-collapses-axis", "command line", "--set on the key a bundle axis varies",
         _bundle_collapse, "which the matrix axis task varies"),
    Case("cli-set-duplicate-key", "command line", "--set with a key written twice",
         _argv_case("--set", "model={heads: 2, heads: 4}", named="model={heads: 2, heads: 4}"),
         "key 'heads' appears twice"),
    Case("cli-only-unknown-value", "command line", "--only with a misspelt value (dynamc)",
         _argv_case("--only", "model.fusion=dynamc", named="model.fusion=dynamc"),
         "'dynamc' is not allowed (did you mean 'dynamic'?)"),
    Case("cli-only-value-not-in-matrix", "command line", "--only a seed the matrix lacks",
         _argv_case("--only", "seed=7", named="seed=7"), "no run has seed = 7; this matrix has 1"),
    Case("cli-jobs-zero", "command line", "run --jobs 0",
         _argv_case("--jobs", "0", named="--jobs 0", dry=False), "must be a positive integer"),
    Case("cli-sweep-trials-zero", "command line", "sweep --trials 0",
         _argv_case("--trials", "0", named="--trials 0", command="sweep"),
         "must be a positive integer"),
    # --- sweep budgets, repeats and the sweep report (docs/sweeps.md) ---------------------------
    Case("exp-sweep-trials-and-budget", "experiment file", "sweep.trials and sweep.budget both",
         _exp_case({"sweep": {"params": {"optim.lr": [0.1, 0.2]}, "trials": 4,
                              "budget": {"hours": 1}}}, "sweep.trials and sweep.budget"),
         "give one of them (`trials: 4` is short for `budget: {trials: 4}`)"),
    Case("exp-sweep-budget-hours", "experiment file", "sweep.budget.hours: 0",
         _exp_case({"sweep": {"params": {"optim.lr": [0.1, 0.2]}, "budget": {"hours": 0}}},
                   "sweep.budget.hours"), "expected a positive number (training hours per study)"),
    Case("cli-sweep-hours-zero", "command line", "sweep --hours 0",
         _argv_case("--hours", "0", named="--hours 0", command="sweep"),
         "must be a positive number (training hours per study)"),
    Case("cli-sweep-repeat-zero", "command line", "sweep --repeat 0",
         _argv_case("--repeat", "0", named="--repeat 0", command="sweep"),
         "must be a positive integer (independent studies per strategy)"),
    Case("report-sweep-best-params", "report", "report --sweep --best-params",
         _report_case("--sweep", "--best-params", named=lambda ws: "--sweep and --best-params"),
         "give one; the sweep report already compares the tuned runs"),
    Case("cli-models-size-zero", "command line", "models --size 0",
         _models_case("--size", "0", named="--size 0"), "must be a positive integer"),
    Case("cli-models-unknown-backbone", "command line", "models --backbone resnet5O",
         lambda ws: (["models", "--backbone", "resnet5O"], "--backbone resnet5O"),
         "not a backbone (did you mean 'resnet50'?)"),
    Case("cli-models-classes-zero", "command line", "models --classes 0",
         _models_case("--classes", "0", named="--classes 0"), "must be a positive integer"),
    # --- report outputs --------------------------------------------------------------------------
    Case("report-output-folder", "report", "report -o on a folder",
         _report_case("--format", "json", "-o", _folder, named=_folder), "is a folder"),
    Case("report-output-unwritable", "report", "report -o under a file (cannot be created)",
         _report_case("--format", "csv", "-o", _under_a_file("r.csv"),
                      named=_under_a_file("r.csv")), "is a file, not a folder"),
    Case("report-plot-folder", "report", "report --plot on a folder",
         _report_case("--plot", _folder, named=_folder), "is a folder; give a file name in it"),
    Case("report-plot-unknown-format", "report", "report --plot p.xyz",
         _report_case("--plot", lambda ws: str(ws.root / "p.xyz"),
                      named=lambda ws: str(ws.root / "p.xyz")),
         "cannot tell the format from '.xyz'"),
    Case("report-min-effect-negative", "report", "report --min-effect -1",
         _report_case("--min-effect", "-1", named=lambda ws: "--min-effect -1"),
         "must be a positive number"),
    Case("report-no-results-for-these-settings", "report",
         "report --set on runs trained with other settings: the advice keeps --results and --set",
         _report_case("--set", "trainer.max_epochs=3", "--format", "json",
                      named=lambda ws: str(ws.results)),
         "--set trainer.max_epochs=3` first", code=0),
    Case("report-compare-unknown-axis", "report", "report --compare on an axis the matrix lacks",
         _compare_case("--compare", "model.relase", named="model.relase",
                       **{"model.release": [False, True]}),
         "not an axis of this matrix (did you mean 'model.release'?); compare one of: "
         "model.fusion, model.release"),
    Case("report-compare-seed", "report", "report --compare seed (the seeds pair the rows)",
         _compare_case("--compare", "seed", named="--compare seed"),
         "the seeds pair every comparison, so its values are not rows"),
    Case("report-compare-baseline-not-a-value", "report",
         "report --compare AXIS --baseline that is not one of its values",
         _compare_case("--compare", "model.release", "--baseline", "ture", named="ture",
                       **{"model.release": [False, True]}),
         "not a value of model.release (did you mean 'True'?); choose from False, True"),
    Case("report-baseline-leaves-no-comparison", "report",
         "report --baseline dynamic --only model.fusion=dynamic: nothing left to compare",
         _compare_case("--baseline", "dynamic", "--only", "model.fusion=dynamic",
                       named="dynamic"),
         "nothing to compare with dynamic: no row differs from it in its strategy alone",
         code=0),
    Case("convert-output-unwritable", "outputs", "convert into a folder that cannot be created",
         lambda ws: (["convert", "digit-scenes", _under_a_file("coco")(ws)],
                     _under_a_file("coco")(ws)), "choose another output folder"),
    Case("convert-unknown-option", "command line", "convert digit-scenes --set of a misspelt key",
         lambda ws: (["convert", "digit-scenes", str(ws.root / "coco"), "--set",
                      "trainimages=3"], "trainimages"), "(did you mean 'train_images'?)"),
    # --- inputs a reader would misread ----------------------------------------------------------
    Case("imagefolder-link-to-split", "data", "a link in a class folder to the split above it",
         _link_case(lambda r: _link(r / "train" / "cat" / "up", r / "train"), str),
         "outside its class folder"),
    Case("imagefolder-link-loop", "data", "a link in a class folder to itself (a loop)",
         _link_case(lambda r: _link(r / "train" / "cat" / "again", r / "train" / "cat"), str),
         "link loop"),
    Case("imagefolder-link-other-class", "data", "a link to another class's folder",
         _link_case(lambda r: _link(r / "train" / "cat" / "dogs", r / "train" / "dog"), str),
         "its images would be labelled 'cat'"),
    Case("imagefolder-file-link-other-class", "data", "an image link into another class folder",
         _link_case(lambda r: _link(r / "val" / "cat" / "x.png", r / "val" / "dog" / "0.png"),
                    str), "outside its class folder"),
    Case("imagefolder-broken-link", "data", "a link to an image that does not exist",
         _link_case(lambda r: _link(r / "val" / "cat" / "gone.png", r / "nowhere.png"), str),
         "broken link"),
    Case("imagefolder-float-image", "data", "a float image outside [0, 1] (PIL mode F)",
         _data_case(_float_image), "float images must lie in [0, 1]", code=1, slow=True),
    Case("coco-duplicate-image", "data", "one image file listed twice in images",
         _data_case(_coco_images(lambda d: d["images"].append(
             {**d["images"][0], "id": 9}))), "both name the file a.png"),
    Case("coco-duplicate-annotation-id", "data", "two annotations with the same id",
         _data_case(_coco_images(lambda d: d["annotations"].append(
             {**d["annotations"][0], "bbox": [1, 1, 4, 4]}))), "appears twice in annotations"),
    Case("coco-crowd-flag-string", "data", "iscrowd written as the string \"false\"",
         _data_case(_coco([{**bad_box([3, 3, 4, 5])[0], "iscrowd": "false"}],
                          named=lambda r: str(r / "annotations" / "train.json"))),
         "iscrowd is 'false'; expected 0 or 1"),
    Case("coco-malformed-bbox", "data", "a bbox of strings, echoed with its brackets",
         _data_case(_coco(bad_box(["15", "2", "3", "4"]),
                          named=lambda r: str(r / "annotations" / "train.json"))),
         "malformed bbox ['15', '2', '3', '4']; expected [x, y, width, height]"),
    Case("coco-nan-bbox", "data", "a bbox holding NaN, echoed with its value",
         _data_case(_coco(bad_box([float("nan"), 2, 3, 4]),
                          named=lambda r: str(r / "annotations" / "train.json"))),
         "malformed bbox [nan, 2, 3, 4]"),
    Case("coco-clipped-box", "data", "a box sticking out of its image: clipped, one warning line",
         _coco_clipped, "warning: ", code=0, slow=True, absent=("UserWarning", "warnings.warn")),
    # --- failures while training ------------------------------------------------------------------
    Case("run-out-of-memory", "run", "an image size no memory holds (data.image_size: 1e7)",
         _oom, "out of memory", code=1),
    # --- issue 33: one image, one label, one split; a diverged validation ------------------------
    Case("imagefolder-class-link-same-split", "data",
         "a class folder that is a link to another class folder (ln -s dog train/c)",
         _tree_with(lambda r: _relink(r / "train" / "c", r / "train" / "dog"), str,
                    classes=("c", "cat", "dog")),
         "those images would be read again as class 'c'"),
    Case("imagefolder-class-link-into-train", "data",
         "a val class folder that is a link into train/",
         _tree_with(lambda r: _relink(r / "val" / "cat", r / "train" / "cat"), str),
         "inside the train split"),
    Case("imagefolder-split-link", "data", "a val/ folder that is a link to train/",
         _tree_with(lambda r: _relink(r / "val", r / "train"), str),
         "one split's images would be read again in the other"),
    Case("imagefolder-image-in-two-splits", "data", "a val image that is a training image",
         _tree_with(lambda r: _link(r / "val" / "cat" / "x.png", r / "train" / "dog" / "0.png"),
                    str), "are the same image file"),
    Case("run-diverged-validation", "run",
         "a validation loss that is NaN while the training loss is finite (optim.lr: 1000)",
         lambda ws: (ws.run_argv(ws.experiment(optim={"lr": 1000.0}, trainer=QUICK_TRAINER)),
                     "optim.lr"),
         "diverged: validation loss val/loss is nan", code=1),
    # --- issue 33 (items 8-11, 18): models, numbers, SLURM options and memory -------------------
    Case("model-heads-indivisible", "model", "model.heads: 3 (the stages' channels are 32, 64)",
         _model_case("model.heads", heads=3),
         "model.heads: 3 does not fit resnet_tiny: channels (32) must be divisible by 2 * heads "
         "(6); heads that fit: 1, 2, 4, 8, 16"),
    Case("model-window-raster", "model", "model.window: 2 with model.positions: raster",
         _model_case("model.window", dry=True, window=2, positions="raster"),
         "windowed attention takes only the default positions (relative2d)"),
    Case("model-max-size-small", "model", "model.max_size: 2, below the 4x4 maps it must cover",
         _model_case("model.max_size", dry=True, max_size=2),
         "set model.max_size: 4 or more (in the matrix run model.fusion=dynamic, seed=1)"),
    Case("model-window-past-tables", "model", "model.window: 8 with model.max_size: 4",
         _model_case("model.max_size", dry=True, window=8, max_size=4),
         "is smaller than model.window 8 plus its halo"),
    Case("slurm-model-heads", "model", "slurm --dry-run with --set model.heads=3",
         _slurm_case("--set", "model.heads=3", "--set", "model.fusion=sa",
                     named="--set model.heads=3"), "heads that fit: 1, 2, 4, 8, 16"),
    Case("exp-float-exponent", "experiment file",
         "optim.lr: 1e-3 (YAML 1.1 reads it as text; read as the number 0.001)",
         _text_case("name: tiny\noptim: {lr: 1e-3, weight_decay: 5E-4}\nmatrix: "
                    "{model.fusion: [conv], seed: [1]}\n", "conv-digits-s1"),
         "dry run (1 runs)", code=0),
    Case("exp-float-quoted", "experiment file", "optim.lr: '1e-3' (a number in quotes)",
         _text_case("name: tiny\noptim: {lr: '1e-3'}\n", "optim.lr"),
         "in quotes it is text: write the number without quotes"),
    Case("slurm-time-zero", "SLURM", "slurm --time 0 (sbatch: no limit)",
         _slurm_case("--time", "0", named="--time '0'"), "a wall time must be positive"),
    Case("slurm-time-malformed", "SLURM", "slurm --time abc",
         _slurm_case("--time", "abc", named="--time 'abc'"),
         "expected minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS"),
    Case("slurm-time-negative", "SLURM", "slurm --time=-1",
         _slurm_case("--time=-1", named="--time '-1'"), "expected minutes, MM:SS"),
    Case("slurm-time-out-of-range", "SLURM", "slurm --time 99:99:99",
         _slurm_case("--time", "99:99:99", named="--time '99:99:99'"),
         "99 minutes (must be below 60)"),
    Case("slurm-signal-before-start", "SLURM", "slurm --time 2 with the default 300 s notice",
         _slurm_case("--time", "2", named="--signal-seconds 300"),
         "the save-and-requeue notice would come before the task starts (--time 2 is 120 s)"),
    Case("slurm-signal-short", "SLURM", "slurm --time 6: a minute to train before each notice",
         _slurm_case("--time", "6", named="--time 6"),
         "warning: --time 6 with --signal-seconds 300 leaves 60 s to train", code=0),
    Case("slurm-partition-newline", "SLURM", "a newline in --partition (would end the header)",
         _slurm_case("--partition", "gpu\n#SBATCH --qos=high", named="--partition"),
         "holds the control character '\\n'"),
    Case("slurm-sbatch-newline", "SLURM", "a newline in --sbatch",
         _slurm_case("--sbatch", "--account=lab\nrm -rf ~", named="--sbatch"),
         "must be one line of text"),
    Case("slurm-partition-space", "SLURM", "a space in --partition",
         _slurm_case("--partition", "gpu debug", named="--partition 'gpu debug'"),
         "expected a partition name, or several separated by commas"),
    Case("slurm-results-space", "SLURM", "a space, # and % in the --results path: quoted",
         _slurm_case("--results", _spaced_results, named=lambda ws: "my results #1 100%%"),
         '#SBATCH --output="', code=0),
    Case("slurm-gpus-negative", "SLURM", "slurm --gpus -1",
         _slurm_case("--gpus=-1", named="--gpus -1"), "expected 0 or more GPUs per run"),
    Case("slurm-gpus-cpu-runs", "SLURM", "slurm --gpus 2 for runs on trainer.accelerator cpu",
         _slurm_case("--gpus", "2", named="--gpus 2"),
         "--set trainer.accelerator=gpu --set trainer.devices=2"),
    Case("slurm-max-parallel-zero", "SLURM", "slurm --max-parallel 0 (was dropped silently)",
         _slurm_case("--max-parallel", "0", named="--max-parallel 0"),
         "expected 1 or more tasks at once"),
    Case("slurm-mem-malformed", "SLURM", "slurm --mem 16GB",
         _slurm_case("--mem", "16GB", named="--mem '16GB'"),
         "expected a number of megabytes, or one with a unit K, M, G or T"),
    Case("cli-models-size-huge", "command line", "models --size 100000 (no memory holds it)",
         _models_case("--size", "100000", named="--size 100000"),
         "give --size at most about"),
    Case("run-detection-cannot-fit", "run",
         "a detection config whose training step no machine here holds (4096 px, batch 64)",
         _data_case(lambda ws: (_scenes_exp(ws, image_size=4096, batch_size=64),
                                "data.batch_size 64")), "it cannot fit"),
    # --- issue 33 (items 4-7, 16): output readers gone, report outputs, trackers, stops ------
    Case("run-output-closed", "run", "run | head -2: the output's reader exits while the run "
         "trains", _long_run, "standard output closed (the command reading it ended): stopping "
         "the run as for Ctrl-C", code=130, slow=True, process=_head_2, after=_left("interrupted")),
    Case("run-ctrl-c-output-closed", "run", "Ctrl-C with the output piped through tee (the key "
         "press ends tee too)", _long_run, _TRAIN_HINT, code=130, slow=True,
         process=_ctrl_c_tee_gone, after=_left("interrupted")),
    Case("run-jobs-parent-killed", "run", "kill -9 of the parent of run --jobs 2, then the same "
         "command", _long_run, "resuming", code=0, slow=True, process=_jobs_parent_killed,
         after=_left("done", resumes=False)),
    Case("sigint-twice", "signal", "Ctrl-C twice: the second stops at once, without saving",
         _twice_case, "not saved at the stop: it resumes from its last checkpoint (step 2)",
         code=130, slow=True, process=_killpoint_run("val:1:INT,val:2:INT"),
         after=_left("interrupted")),
    Case("run-jobs-summary-once", "run", "run --jobs 2 with a run that fails: the matrix's "
         "summary once, from the parent", _jobs_failed, "all workers finished", code=1,
         slow=True, process=_jobs_run, after=_summary_once),
    Case("report-output-link", "report", "report -o on a link: written through to its target",
         _report_case("--format", "md", "-o", _output_link, named=_output_link), "wrote",
         code=0, after=_link_written_through),
    Case("report-output-fifo", "report", "report -o on a FIFO a reader waits on",
         _report_case("--format", "csv", "-o", _output_fifo, named=_output_fifo), "wrote",
         code=0, after=_fifo_written_into),
    Case("report-output-device-full", "report", "report -o /dev/full (a write that fails)",
         _report_case("--format", "json", "-o", "/dev/full", named=lambda ws: "/dev/full"),
         "cannot write it (No space left on device)", after=_still_a_device),
    Case("report-html-missing-folder", "report", "report --html in a folder that does not exist",
         _report_case("--html", _missing_folder, named=_missing_folder),
         "does not exist; create it first", after=_no_folder_made),
    Case("report-output-link-loop", "report", "report -o on a link to itself",
         _report_case("-o", _link_loop, named=_link_loop), "is a link loop"),
    Case("exp-mlflow-uri-scheme", "experiment file", "trainer.mlflow_uri with a scheme MLflow "
         "has no store for", lambda ws: _mlflow_exp(ws, "notascheme://x", "--dry-run"),
         "MLflow has no tracking store for the scheme 'notascheme'"),
    Case("run-mlflow-server-down", "run", "trainer.mlflow_uri: a tracking server that does not "
         "answer", lambda ws: _mlflow_exp(ws, "http://127.0.0.1:9"),
         "cannot use the MLflow tracking store", after=_no_run_folder),
    Case("run-trackers-after-kill", "run", "kill -9 two steps after a checkpoint, then the same "
         "command: each TensorBoard and MLflow point once", _trackers_case, "resuming", code=0,
         slow=True, process=_then_rerun(_killpoint_run("step:5")), after=_trackers_exact),
    # --- plugins (issue 36, docs/plugins.md) ----------------------------------------------------
    Case("plugin-missing-file", "plugins", "plugins: [scalar_gat.py], a file that is not there",
         _plugin_case({"scalar_gate.py": None}, ["scalar_gat.py"], "scalar_gat.py"),
         "no such file"),
    Case("plugin-syntax-error", "plugins", "a plugin file that is not valid Python",
         _plugin_case({"gate.py": PLUGIN_HEAD + "\n\ndef fuse(self x):\n    pass\n"},
                      ["gate.py"], "gate.py"), "gate.py, line 7: SyntaxError: invalid syntax"),
    Case("plugin-import-error", "plugins", "a plugin that imports a module not installed",
         _plugin_case({"gate.py": "import math\nimport gatelib\n"}, ["gate.py"], "gate.py"),
         "line 2: ModuleNotFoundError: No module named 'gatelib'"),
    Case("plugin-shadows-builtin", "plugins", "a plugin that registers a strategy as dynamic",
         _plugin_case({"gate.py": PLUGIN_HEAD + "\n\n@register('dynamic')\nclass Mine("
                       "AttentionFusion):\n    pass\n"}, ["gate.py"], "gate.py"),
         "line 7: ValueError: strategy name 'dynamic' is a built-in strategy (lesa/fusion.py); "
         "register Mine under another name"),
    Case("plugin-shadows-builtin-dataset", "plugins", "a plugin that registers a dataset as digits",
         _plugin_case({"data.py": "from bench.data import DATASETS, register_dataset\n"
                       "register_dataset('digits', DATASETS['cifar10'])\n"}, ["data.py"],
                      "data.py"), "dataset name 'digits' is a built-in dataset"),
    Case("plugin-registers-nothing", "plugins", "a plugin file that registers nothing",
         _plugin_case({"helpers.py": "def gate(x):\n    return x\n"}, ["helpers.py"],
                      "helpers.py"), "registers nothing"),
    Case("plugin-unknown-option", "plugins", "a misspelt option of a plugin's strategy",
         _plugin_case({"scalar_gate.py": None}, ["scalar_gate.py"],
                      "model.scalar_gate.alpha_nit", ("scalar_gate",),
                      {"scalar_gate": {"alpha_nit": 1.0}}), "unknown key (did you mean "
         "'alpha_init'?)"),
    Case("plugin-option-refused", "plugins", "a value the strategy's check_options refuses",
         _plugin_case({"scalar_gate.py": None}, ["scalar_gate.py"], "model.scalar_gate",
                      ("scalar_gate",), {"scalar_gate": {"alpha_init": 50.0}}),
         "alpha_init: 50.0 saturates the sigmoid; choose a value in [-20, 20]"),
    Case("plugin-raises-in-forward", "plugins",
         "a strategy that raises in its training forward: that run fails, the matrix goes on",
         _plugin_case({"flaky.py": FLAKY}, ["flaky.py"], "flaky-digits-s1", ("flaky", "conv"),
                      dry=False), "failed: RuntimeError: flaky: the context term is not ready "
         "for training", code=1),
    Case("check-plugin-missing", "plugins", "check-plugin on a module that is not installed",
         _check_plugin_case({}, "no_such_gate", "no_such_gate"), "no module named"),
    Case("check-plugin-broken", "plugins", "check-plugin on a strategy that breaks the contract",
         _check_plugin_case({"broken_gate.py": BROKEN_GATE}, "broken_gate.py", "broken_gate"),
         "4 passed, 8 failed: strategy broken_gate: gradients; strategy broken_gate: "
         "determinism; strategy broken_gate: seeded init", code=1),
    # --- issue 35: data splits as blocks (docs/statistics.md) -----------------------------------
    Case("report-looks-with-splits", "report",
         "a planned sequential design (analysis.looks) with data.split_seed as a matrix axis",
         lambda ws: (["report", str(ws.experiment(
             matrix={"model.fusion": ["conv", "dynamic"], "data.split_seed": [0, 1],
                     "seed": [1, 2, 3, 4]}, analysis={"looks": [2, 4]})),
             "--results", str(ws.results)], "analysis.looks"),
         "a planned sequential design reads the seeds of one pool on one data split, but "
         "data.split_seed is a matrix axis here (0, 1)"),
]


# ---------------------------------------------------------------------------------------------
# running a case

# A real SIGINT, sent by the process to itself at a chosen step (as a Ctrl-C would arrive).
SIGNAL_DRIVER = r"""
import os, signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal
from bench.tasks.classification import ClassificationTask
phase, _, name = sys.argv[1].partition(":")
sig = getattr(signal, "SIG" + (name or "INT"))
original = getattr(ClassificationTask, phase + "_step")
sent = []  # one key press: a second Ctrl-C would stop at once (tests/test_resume_signals.py)
def step(self, batch, batch_idx):
    trainer = self.trainer
    if not sent and not trainer.sanity_checking and (phase != "training"
                                                     or trainer.global_step >= 2):
        sent.append(sig)
        os.kill(os.getpid(), sig)
    return original(self, batch, batch_idx)
setattr(ClassificationTask, phase + "_step", step)
from bench.cli import main
sys.exit(main(sys.argv[2:]))
"""


def run_case(case: Case, ws: Workspace, capsys=None) -> tuple[int, str, str]:
    """Set the case up and run the command line; returns (exit code, output, named input)."""
    argv, named = case.setup(ws)
    if case.process:
        code, out = case.process(ws, argv)
        return code, out, named
    if case.signal_at:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        proc = subprocess.run([sys.executable, "-c", SIGNAL_DRIVER, case.signal_at, *argv],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        return proc.returncode, proc.stdout + proc.stderr, named
    from bench.cli import main

    try:
        code = main(argv)
    except BaseException as err:  # noqa: BLE001 - an escaping exception is a traceback
        import traceback

        code = getattr(err, "code", None) or 1
        print("Traceback (escaped main):\n" + traceback.format_exc())
    if capsys is not None:
        out = capsys.readouterr()
        return code, out.out + out.err, named
    return code, "", named


def squash(text: str) -> str:
    return re.sub(r"\s+", "", text)


@pytest.fixture
def ws(tmp_path):
    return Workspace(tmp_path)


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=[pytest.mark.slow] if c.slow
                                               else []) for c in CATALOGUE])
def test_bad_input(case: Case, ws: Workspace, capsys):
    before = ws.snapshot()
    code, out, named = run_case(case, ws, capsys)
    assert code == case.code, out
    assert "Traceback" not in out, out
    assert squash(case.expect) in squash(out), f"{case.expect!r} not in:\n{out}"
    assert squash(named) in squash(out), f"the input {named!r} is not named in:\n{out}"
    assert ws.snapshot() == before, "the finished run's files changed"
    for fragment in case.absent:
        assert fragment not in out, f"{fragment!r} in:\n{out}"
    if case.signal_at:
        from bench.store import RunDir

        rd = RunDir(ws.results / "tiny" / named)
        status = rd.status()
        assert status["state"] == "interrupted", status
        assert rd.last_checkpoint.exists()
        assert not (rd.path / "lock").exists()
    if case.after:
        case.after(ws, named, out)
    if case.id.startswith("ckpt-"):
        assert squash(named + ".unreadable") in squash(out.replace("moved to ", "moved to " +
                                                                   str(Path(named).parent) + "/"))


def test_catalogue_is_big_and_ids_are_unique():
    ids = [c.id for c in CATALOGUE]
    assert len(ids) == len(set(ids)) and len(ids) >= 20


def test_every_case_is_documented():
    doc = (ROOT / "docs" / "bad-inputs.md").read_text()
    missing = [c.id for c in CATALOGUE if f"`{c.id}`" not in doc]
    assert not missing, f"not in docs/bad-inputs.md: {missing}"
    sections = {m.group(1): m.group(2) for m in
                re.finditer(r"### `([^`]+)`(.*?)(?=\n### |\n## |\Z)", doc, re.S)}
    stale = [c.id for c in CATALOGUE if squash(c.expect) not in squash(sections[c.id])
             or f"exit {c.code}" not in sections[c.id]]
    assert not stale, f"docs/bad-inputs.md shows another message or exit code for: {stale}"


def test_debug_shows_the_traceback(ws):
    from bench.cli import main
    from bench.config import ConfigError

    exp = ws.experiment(matrix={"model.fusion": ["dynamc"]})
    with pytest.raises(ConfigError):
        main(["--debug", *ws.run_argv(exp)])


# ---------------------------------------------------------------------------------------------
# `python tests/test_catalogue.py [ids...]`: run the cases and print what they get, as Markdown


def _observed(ids: list[str]) -> None:
    import contextlib
    import io

    for case in CATALOGUE:
        if ids and case.id not in ids:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            ws = Workspace(Path(tmp))
            buf = io.StringIO()
            with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
                code, out, named = run_case(case, ws)
            out = (out or buf.getvalue()).replace(tmp, "<tmp>")
            lines = [line.strip() for line in out.splitlines()
                     if any(k in line for k in ("error", "failed", "warning", "interrupted"))]
            print(f"### `{case.id}`: {case.description}\n\nexit {code}\n")
            print("```\n" + "\n".join(lines) + "\n```\n", flush=True)


if __name__ == "__main__":
    _observed(sys.argv[1:])
