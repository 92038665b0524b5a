"""Disk faults, untrusted checkpoints, NaN losses and determinism, end to end through the CLI.

All commands run in-process via ``hagan.cli.main`` on a tiny 32^3 model (a few seconds each).
What ``tests/test_checkpoint.py`` already covers at the library level (ENOSPC during a save,
truncated and zero-byte files, ``resolve()`` fallback, the malicious pickle) is not repeated;
these tests check the same guarantees through ``hagan train``, ``generate`` and ``evaluate``.
"""

from __future__ import annotations

import hashlib
import logging
import pickle

import numpy as np
import pytest
import torch
from helpers import make_random_dataset

from hagan import checkpoint as ckpt
from hagan.cli import main
from hagan.train import Trainer, read_metrics

OPTS = ["--set", "progress=False", "--set", "tensorboard=False", "--set", "image_every=0",
        "--set", "log_every=1", "--set", "batch_size=2", "--set", "checkpoint_every=2"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_random_dataset(tmp_path_factory.mktemp("faults") / "data", n=4, size=32)


def train(data, run, iterations, *extra):
    return main(["train", "--data", str(data), "--out", str(run), *OPTS,
                 "--set", f"iterations={iterations}", *extra])


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class _Payload:
    """Unpickling this object would create a file: the proof that code ran."""

    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


# --- 2. disk faults ---------------------------------------------------------------------------
@pytest.mark.slow  # over 10 s on 2 CPU cores
def test_resume_skips_truncated_newest_checkpoint(data, tmp_path, caplog):
    """A crash that truncated the newest checkpoint: ``hagan train`` says so, resumes from the
    previous good one, and redoes the lost iterations (the broken file is set aside as
    ``ckpt_00000004.pt.damaged``, bytes intact, and a whole ckpt_00000004.pt is written)."""
    run = tmp_path / "run"
    assert train(data, run, 4) == 0
    newest = ckpt.checkpoint_path(run, 4)
    newest.write_bytes(newest.read_bytes()[:5000])
    broken = digest(newest)
    caplog.set_level(logging.INFO)
    assert train(data, run, 6) == 0
    text = caplog.text
    assert "skipping broken checkpoint" in text and "ckpt_00000004.pt" in text
    assert "truncated or corrupt" in text
    assert f"resuming from {ckpt.checkpoint_path(run, 2)} (iteration 2)" in text
    assert ckpt.load_checkpoint(newest)["step"] == 4  # rewritten, whole again
    assert digest(newest.with_name(newest.name + ".damaged")) == broken  # set aside
    assert ckpt.latest_checkpoint(run)[1]["step"] == 6
    assert [r["step"] for r in read_metrics(run)] == [1, 2, 3, 4, 5, 6]


# --- 3. untrusted files -----------------------------------------------------------------------
@pytest.fixture
def evil_run(tmp_path):
    """A run folder whose only checkpoint would create ``marker`` when unpickled."""
    marker = tmp_path / "pwned"
    path = ckpt.checkpoint_path(tmp_path / "run", 2)
    path.parent.mkdir(parents=True)
    torch.save({"kind": ckpt.KIND, "step": 2, "payload": _Payload(str(marker))}, path,
               pickle_protocol=pickle.HIGHEST_PROTOCOL)
    return tmp_path / "run", path, marker


def test_crafted_checkpoint_refused_by_generate_and_evaluate(evil_run, data, tmp_path, capsys,
                                                             caplog):
    """``hagan generate FILE``/``RUN`` and ``hagan evaluate`` refuse it; no code runs."""
    run, path, marker = evil_run
    caplog.set_level(logging.WARNING)
    assert main(["generate", str(path), "--out", str(tmp_path / "g")]) == 2
    assert "refusing to load" in capsys.readouterr().err
    assert main(["generate", str(run), "--out", str(tmp_path / "g")]) == 2
    assert "holds no loadable checkpoint" in capsys.readouterr().err
    assert "refusing to load" in caplog.text  # the skipped file is named with the reason
    assert main(["evaluate", str(path), "--data", str(data), "--n", "2", "--no-cache"]) == 2
    assert "refusing to load" in capsys.readouterr().err
    assert not marker.exists() and not (tmp_path / "g").exists()


def test_crafted_checkpoint_never_resumed_by_train(evil_run, data, caplog):
    """``hagan train --out RUN`` (which resumes from RUN) never unpickles the crafted file and,
    as it is the run's only checkpoint, refuses to start over (exit 2, nothing changed);
    ``--fresh`` starts a new run and moves the file aside, bytes intact."""
    run, path, marker = evil_run
    before = digest(path)
    caplog.set_level(logging.INFO)
    assert train(data, run, 1) == 2
    assert "refusing to load" in caplog.text and "resuming from" not in caplog.text
    assert not marker.exists() and digest(path) == before
    assert train(data, run, 1, "--fresh") == 0
    moved = list(run.glob("previous-*/checkpoints/ckpt_00000002.pt"))
    assert len(moved) == 1 and digest(moved[0]) == before and not marker.exists()


def test_manifest_paths_cannot_escape_the_data_folder(data, tmp_path, capsys):
    """Manifest entries ``../../etc/passwd`` or ``/etc/passwd`` are refused by name."""
    from hagan.data import DataError, PreparedDataset, Record, write_manifest

    for entry in ("../../etc/passwd", "/etc/passwd", "../data/volumes/vol_000.npy"):
        bad = make_random_dataset(tmp_path / "bad", n=1, size=32)
        write_manifest(bad, [Record(file="vol_000.npy"), Record(file=entry)])
        with pytest.raises(DataError, match="points outside"):
            PreparedDataset(bad, size=32)
        assert train(bad, tmp_path / "run", 1) == 2
        err = capsys.readouterr().err
        assert f"manifest entry {entry!r} points outside" in err and len(err.splitlines()) == 1


# --- 5. numerical faults ----------------------------------------------------------------------
@pytest.mark.slow  # over 10 s on 2 CPU cores
def test_nan_loss_stops_with_iteration_and_last_good_checkpoint(data, tmp_path, capsys,
                                                                monkeypatch):
    """A NaN loss at iteration 5 stops training (exit 3) naming the iteration and the last
    good checkpoint (iteration 4), whose bytes stay unchanged; nothing is saved for 5."""
    run = tmp_path / "run"
    real_step = Trainer.step
    seen = {}

    def step(self, x, y=None):
        losses = real_step(self, x, y)
        if self.step_num == 4:  # computing iteration 5
            seen["digest"] = digest(ckpt.checkpoint_path(run, 4))
            losses["loss_g"] = torch.tensor(float("nan"))
        return losses

    monkeypatch.setattr(Trainer, "step", step)
    assert train(data, run, 8) == 3
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "non-finite loss at iteration 5 (loss_g=nan)" in err
    assert f"the last good checkpoint is {ckpt.checkpoint_path(run, 4)}" in err
    assert digest(ckpt.checkpoint_path(run, 4)) == seen["digest"]
    assert [p.name for p in ckpt.list_checkpoints(run)] == ["ckpt_00000002.pt",
                                                            "ckpt_00000004.pt"]
    state = ckpt.load_checkpoint(ckpt.checkpoint_path(run, 4))
    for sd in state["models"].values():
        assert all(torch.isfinite(t).all() for t in sd.values() if t.is_floating_point())


# --- 6. determinism ---------------------------------------------------------------------------
@pytest.mark.slow  # over 10 s on 2 CPU cores
def test_same_seed_same_losses_and_same_samples(data, tmp_path):
    """Two CPU runs with the same seed log identical losses; ``hagan generate`` twice with the
    same seed writes identical volumes (and another seed different ones)."""
    from hagan.data import load_nifti

    for name in ("a", "b"):
        assert train(data, tmp_path / name, 3, "--set", "seed=5", "--set", "device=cpu") == 0
    drop = ("ms_per_step", "time")
    logs = [[{k: v for k, v in r.items() if k not in drop} for r in read_metrics(tmp_path / n)]
            for n in ("a", "b")]
    assert logs[0] == logs[1] and len(logs[0]) == 3

    vols = {}
    for name, seed in (("s1", "7"), ("s2", "7"), ("s3", "8")):
        assert main(["generate", str(tmp_path / "a"), "--n", "1", "--seed", seed, "--device",
                     "cpu", "--out", str(tmp_path / name)]) == 0
        vols[name] = load_nifti(tmp_path / name / "sample_0000.nii.gz")
    assert np.array_equal(vols["s1"], vols["s2"])
    assert not np.array_equal(vols["s1"], vols["s3"])
