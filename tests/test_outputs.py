"""`report -o/--plot/--html` write to the path given, not over it: through a link to its target,
into a FIFO or a device directly, never into a folder that does not exist (none is created), and
a write that fails is an error with a non-zero exit, not a traceback or a replaced device."""
from __future__ import annotations

import os
import stat
import sys
import threading
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from conftest import TINY  # noqa: E402


@pytest.fixture
def report(tmp_path, capsys):
    """`lesa-bench report` of a tiny experiment (no runs: the tables are empty, the files are
    still written) with these arguments -> (exit code, output)."""
    from bench.cli import main

    exp = tmp_path / "tiny.yaml"
    exp.write_text(yaml.safe_dump(TINY))

    def call(*args: str) -> tuple[int, str]:
        code = main(["report", str(exp), "--results", str(tmp_path / "results"), *args])
        out = capsys.readouterr()
        return code, out.out + out.err
    return call


def test_a_link_is_written_through_to_its_target(report, tmp_path):
    target = tmp_path / "kept" / "report.md"
    target.parent.mkdir()
    target.write_text("old\n")
    target.chmod(0o640)
    link = tmp_path / "latest.md"
    link.symlink_to(target)
    code, out = report("--format", "md", "-o", str(link))
    assert code == 0, out
    assert link.is_symlink() and os.readlink(link) == str(target)  # the link stays a link
    assert target.read_text() != "old\n" and "tiny" in target.read_text()
    assert stat.S_IMODE(target.stat().st_mode) == 0o640  # the file keeps its mode
    assert not [p for p in target.parent.iterdir() if p.name.startswith(".")]  # no temp left


def test_a_dangling_link_creates_its_target(report, tmp_path):
    link = tmp_path / "r.json"
    link.symlink_to(tmp_path / "target.json")
    code, out = report("-o", str(link))
    assert code == 0, out
    assert link.is_symlink() and (tmp_path / "target.json").read_text().startswith("{")


def test_a_fifo_is_written_into_not_replaced(report, tmp_path):
    fifo = tmp_path / "report.csv"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_text()), daemon=True)
    reader.start()
    code, out = report("-o", str(fifo))
    reader.join(timeout=60)
    assert code == 0, out
    assert stat.S_ISFIFO(fifo.stat().st_mode)  # still the FIFO
    assert got and got[0].startswith("strategy,dataset,metric")  # the reader got the export
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux)")
def test_a_full_device_is_an_error_and_stays_a_device(report):
    code, out = report("--format", "json", "-o", "/dev/full")
    assert code == 2, out
    assert "--output /dev/full: cannot write it (No space left on device)" in out
    assert "Traceback" not in out
    assert stat.S_ISCHR(os.stat("/dev/full").st_mode)  # as root it was replaced by a file


@pytest.mark.parametrize("flag, name", [("--html", "x.html"), ("--plot", "x.png"),
                                        ("-o", "x.json")])
def test_a_missing_folder_is_refused_not_created(report, tmp_path, flag, name):
    path = tmp_path / "no" / "such" / name
    code, out = report(flag, str(path))
    assert code == 2, out
    assert f"the folder {path.parent} does not exist; create it first" in " ".join(out.split())
    assert not (tmp_path / "no").exists()


def test_a_link_loop_is_refused(report, tmp_path):
    loop = tmp_path / "loop.md"
    loop.symlink_to(loop)
    code, out = report("-o", str(loop))
    assert code == 2 and "is a link loop" in out, out


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write read-only files")
def test_a_read_only_file_is_refused_before_the_report(report, tmp_path):
    path = tmp_path / "r.md"
    path.write_text("keep me\n")
    path.chmod(0o444)
    code, out = report("-o", str(path))
    assert code == 2 and "is read-only" in out, out
    assert path.read_text() == "keep me\n"


def test_a_failed_write_leaves_the_old_file_and_no_temp(tmp_path, monkeypatch):
    from bench.config import ConfigError
    from bench.report.exports import atomic_output

    path = tmp_path / "r.html"
    path.write_text("old")
    with pytest.raises(ConfigError, match=r"--html .*r\.html: cannot write it \(No space"):
        with atomic_output(path, "--html") as tmp:
            tmp.write_text("half")
            raise OSError(28, "No space left on device")
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["r.html"]
