"""Outputs of evaluate, generate, export and bench: bad numbers are refused at parse time, no
command writes into a prepared dataset or over its own input, output file names cannot be
folders, ``generate --force`` never mixes two requests' samples, and locks leave no files."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from helpers import make_random_dataset

from hagan import checkpoint as ckpt
from hagan.cli import main
from hagan.config import preset
from hagan.models import build_models


def _run(argv: list[str], capsys) -> tuple[int, str]:
    """Exit code and stderr of ``hagan ARGV`` in this process (argparse errors exit)."""
    capsys.readouterr()
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:
        code = int(exc.code or 0)
    return code, capsys.readouterr().err


def _snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (hidden ones too) with its SHA-256."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("outputs")
    cfg = preset("tiny32")
    torch.manual_seed(0)
    run = root / "run"
    ckpt_file = ckpt.save_models(ckpt.checkpoint_path(run, 1), cfg, build_models(cfg), step=1)
    data = make_random_dataset(root / "data", n=4, size=cfg.size)
    return {"root": root, "run": run, "ckpt": ckpt_file, "data": data}


@pytest.mark.parametrize("argv", [
    ["evaluate", "RUN", "--n", "4", "--pairs", "0"],
    ["evaluate", "RUN", "--n", "4", "--pairs", "-5"],
    ["evaluate", "RUN", "--n", "4", "--batch-size", "0"],
    ["evaluate", "RUN", "--n", "4", "--permutations", "-1"],
    ["evaluate", "RUN", "--n", "0"],
    ["evaluate", "RUN", "--seed", "-1"],
    ["bench", "--iters", "0"],
    ["bench", "--warmup", "-1", "--iters", "1"],
    ["bench", "--mode", "generate", "--chunk", "-3"],
    ["bench", "--batch-size", "0"],
    ["bench", "--iters", "x"],
    ["generate", "RUN", "--out", "S", "--n", "0"],
    ["generate", "RUN", "--out", "S", "--batch-size", "-2"],
    ["generate", "RUN", "--out", "S", "--spacing", "1", "0", "1"],
])
def test_bad_numbers_are_refused_at_parse_time(argv, world, capsys):
    argv = [str(world["run"]) if a == "RUN" else str(world["root"] / a) if a == "S" else a
            for a in argv]
    if argv[0] == "evaluate":  # a complete command apart from the bad number
        argv += ["--data", str(world["data"]), "--device", "cpu"]
    code, err = _run(argv, capsys)
    assert code == 2
    assert "Traceback" not in err
    assert "--set" not in err  # bench has no --set
    assert not (world["root"] / "S").exists()


@pytest.mark.parametrize("where", ["data", "data/volumes"])
def test_generate_never_writes_into_a_dataset(world, where, capsys):
    before = _snapshot(world["data"])
    code, err = _run(["generate", world["run"], "--n", "1", "--device", "cpu",
                      "--spacing", "1", "1", "1", "--out", world["root"] / where], capsys)
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert _snapshot(world["data"]) == before


def test_evaluate_and_export_never_overwrite_dataset_files_or_their_input(world, capsys):
    data, run = world["data"], world["run"]
    before, ckpt_before = _snapshot(data), _snapshot(run)
    for argv in (["evaluate", run, "--data", data, "--n", "2", "--device", "cpu",
                  "--out", data / "manifest.csv", "--force"],
                 ["evaluate", run, "--data", data, "--n", "2", "--device", "cpu",
                  "--out", data / "volumes" / "report.json"],
                 ["export", run, "--out", data / "dataset.json", "--force"],
                 ["export", run, "--out", world["ckpt"], "--force"],
                 ["evaluate", run, "--data", data, "--n", "2", "--device", "cpu",
                  "--out", world["ckpt"], "--force"]):
        code, err = _run(argv, capsys)
        assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, (argv, err)
    assert _snapshot(data) == before
    assert _snapshot(run) == ckpt_before


def test_output_file_names_cannot_be_folders(world, capsys):
    w = world["root"] / "w"
    w.mkdir()
    (w / "existing").mkdir()
    for argv in (["evaluate", world["run"], "--data", world["data"], "--n", "2",
                  "--device", "cpu", "--out", f"{w / 'newdir'}/"],
                 ["evaluate", world["run"], "--data", world["data"], "--n", "2",
                  "--device", "cpu", "--out", w / "existing"],
                 ["export", world["run"], "--out", f"{w / 'w2.st'}/"],
                 ["export", world["run"], "--out", w / "existing", "--force"]):
        code, err = _run(argv, capsys)
        assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, (argv, err)
    assert sorted(p.name for p in w.iterdir()) == ["existing"]
    assert not any((w / "existing").iterdir())


def test_generate_force_moves_the_earlier_samples_aside(world, capsys):
    out = world["root"] / "samples"
    common = ["--device", "cpu", "--spacing", "1", "1", "1", "--out", out]
    assert _run(["generate", world["run"], "--n", "3", *common], capsys)[0] == 0
    first = _snapshot(out)
    assert _run(["generate", world["run"], "--n", "1", "--seed", "5", "--force", *common],
                capsys)[0] == 0
    top = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    previous = [name for name in top if name.startswith("previous-")]
    assert len(previous) == 1
    assert sorted(set(top) - set(previous)) == ["generate.json", "sample_0000.nii.gz"]
    assert _snapshot(out / previous[0]) == {k: v for k, v in first.items()
                                            if not k.startswith(".")}
    # without --force, samples beyond the request's n from another request are refused too
    code, err = _run(["generate", world["run"], "--n", "1", *common], capsys)
    assert code == 2 and "Traceback" not in err


def test_export_reads_a_weights_file_and_writes_a_checked_copy(world, capsys):
    from hagan.weights import read_weights

    first = world["root"] / "first.safetensors"
    assert _run(["export", world["run"], "--out", first], capsys)[0] == 0
    again = world["root"] / "again.safetensors"
    code, err = _run(["export", first, "--out", again], capsys)
    assert code == 0, err
    cfg1, states1, step1 = read_weights(first)
    cfg2, states2, step2 = read_weights(again)
    assert cfg1 == cfg2 and step1 == step2 == 1 and states1.keys() == states2.keys()
    assert all(torch.equal(states1[n][k], states2[n][k]) for n in states1 for k in states1[n])
    code, err = _run(["export", first, "--out", first, "--force"], capsys)  # its own input
    assert code == 2 and "Traceback" not in err


def test_a_file_lock_leaves_no_file_behind(tmp_path):
    from hagan.fileio import lock_file, lock_folder

    report = tmp_path / "r.json"
    with lock_file(report, "test"):
        assert any(p.name.endswith(".hagan.lock") for p in tmp_path.iterdir())
        with lock_file(report, "test"):  # re-entrant
            pass
        assert any(p.name.endswith(".hagan.lock") for p in tmp_path.iterdir())
    assert list(tmp_path.iterdir()) == []
    with lock_folder(tmp_path / "f", "test"):  # a folder's lock stays inside its folder
        pass
    with lock_file(report, "test"):  # and the file lock still excludes others
        import subprocess
        import sys

        code = ("import sys; from hagan.fileio import lock_file; from hagan.errors import "
                f"RunError\ntry:\n  lock_file({str(report)!r}, 'other')\nexcept RunError:\n"
                "  sys.exit(3)")
        assert subprocess.run([sys.executable, "-c", code]).returncode == 3


def test_an_empty_weights_file_is_called_empty_without_a_guessed_cause(tmp_path):
    from hagan.errors import CheckpointError
    from hagan.fileio import load_weights_only
    from hagan.weights import read_weights

    empty = tmp_path / "w.pt"
    empty.write_bytes(b"")
    for read in (lambda: load_weights_only(empty, "checkpoint"), lambda: read_weights(empty)):
        with pytest.raises(CheckpointError) as info:
            read()
        assert "0 bytes" in str(info.value) and "interrupted" not in str(info.value)


def test_evaluate_writes_no_progress_bar_when_stderr_is_not_a_terminal(world, capsys):
    out = world["root"] / "eval" / "report.json"
    code, err = _run(["evaluate", world["run"], "--data", world["data"], "--n", "2",
                      "--device", "cpu", "--permutations", "0", "--pairs", "1",
                      "--out", out], capsys)
    assert code == 0, err
    assert "it/s" not in err and "%|" not in err
    assert sorted(p.name for p in out.parent.iterdir()) == [".hagan_cache", "report.json"]
