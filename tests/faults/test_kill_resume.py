"""Killing ``hagan train`` at random moments, then resuming by re-running the same command.

A SIGKILL gives the process no chance to clean up, so these tests check what the atomic
checkpoint writes and the resume logic promise (``hagan.checkpoint``, ``hagan.train``):

* after every kill the newest checkpoint loads, and every checkpoint file present loads
  (no byte of a finished checkpoint is ever lost or half-written);
* at most one checkpoint interval of work is lost: the last step logged to ``metrics.jsonl``
  before the kill minus the step of the newest checkpoint is <= ``checkpoint_every``;
* re-running the same command resumes, and the run finally ends at ``iterations`` with a log
  that holds every step exactly once.

Some kills are timed during a checkpoint write: the test polls the checkpoints folder and
kills as soon as the temporary file of the next checkpoint appears.

SIGTERM is covered by ``tests/test_train.py::test_cli_train_generate_and_sigterm``; SIGINT
(Ctrl-C) is covered here: a checkpoint is written and the exit code is 128 + SIGINT = 130.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import REPO, make_random_dataset

from hagan import checkpoint as ckpt

EVERY = 2  # checkpoint_every: one interval of lost work at most


def train_cmd(data: Path, run: Path, iterations: int) -> list[str]:
    return [sys.executable, "-m", "hagan", "train", "--data", str(data), "--out", str(run),
            "--preset", "tiny32", "--set", f"iterations={iterations}",
            "--set", f"checkpoint_every={EVERY}", "--set", "log_every=1",
            "--set", "batch_size=2", "--set", "keep_checkpoints=3",
            "--set", "progress=False", "--set", "tensorboard=False", "--set", "image_every=0"]


def start(cmd: list[str]) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            encoding="utf-8", errors="replace",
                            cwd=REPO, env=env)


def logged_steps(run: Path) -> list[int]:
    """Steps in ``metrics.jsonl``; a last line cut by a kill is left out (the resumed run drops
    it too), any other damage raises."""
    return [r["step"] for r in ckpt.load_metrics_log(run / "metrics.jsonl")[0]]


def temp_files(run: Path) -> list[Path]:
    folder = run / ckpt.CHECKPOINT_DIR
    return sorted(folder.glob(".ckpt_*.tmp")) if folder.is_dir() else []


def newest_step(run: Path) -> int:
    found = ckpt.latest_checkpoint(run)
    return int(found[1]["step"]) if found else 0


def wait_for(proc: subprocess.Popen, condition, timeout: float = 120, poll: float = 0.005):
    """Poll ``condition()`` until true; False when the process ended or time ran out first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(poll)
    return False


def kill_and_resume(tmp_path: Path, kinds: list[str], iterations: int, seed: int) -> dict:
    """Run ``hagan train`` with one SIGKILL per entry of ``kinds`` ("random" or "write"),
    checking the invariants after each kill; then let it finish. Returns counters."""
    rng = random.Random(seed)
    data = make_random_dataset(tmp_path / "data", n=4, size=32)
    run = tmp_path / "run"
    cmd = train_cmd(data, run, iterations)
    stats = {"kills": 0, "during_write": 0, "files_checked": 0, "steps_lost": 0,
             "stale_temp_files": 0}
    for kind in kinds:
        resumed_from = newest_step(run)
        proc = start(cmd)
        try:
            if kind == "write":
                # let one new checkpoint complete, then kill as soon as the next one is being
                # written (its temporary file exists, the final name does not yet)
                ok = wait_for(proc, lambda r=resumed_from: newest_step_fast(run) > r) and \
                    wait_for(proc, lambda: bool(temp_files(run)))
            else:
                ok = wait_for(proc,
                              lambda r=resumed_from: max(logged_steps(run), default=0) > r)
                time.sleep(rng.uniform(0.0, 1.0))
            assert ok and proc.poll() is None, \
                f"the run ended before the kill: {proc.communicate()}"
            writing = bool(temp_files(run))
            proc.send_signal(signal.SIGKILL)
            proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        assert proc.returncode == -signal.SIGKILL
        stats["kills"] += 1
        stats["during_write"] += writing

        # every checkpoint present loads; the newest is the one resume will use
        files = ckpt.list_checkpoints(run)
        for path in files:
            state = ckpt.load_checkpoint(path)  # raises CheckpointError on a single lost byte
            assert state["step"] == int(path.stem.split("_")[1])
        stats["files_checked"] += len(files)
        newest = newest_step(run)
        assert newest == (int(files[-1].stem.split("_")[1]) if files else 0)
        last_logged = max(logged_steps(run), default=0)
        assert newest >= resumed_from, "a kill must never lose an already saved checkpoint"
        assert 0 <= last_logged - newest <= EVERY, (kind, last_logged, newest)
        stats["steps_lost"] += last_logged - newest
        stats["stale_temp_files"] = len(temp_files(run))

    proc = start(cmd)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, (out, err)
    assert f"trained to iteration {iterations}" in out
    assert newest_step(run) == iterations
    assert "resuming from" in err  # the last run resumed instead of starting over
    assert logged_steps(run) == list(range(1, iterations + 1))  # no step lost or repeated
    for path in ckpt.list_checkpoints(run):
        ckpt.load_checkpoint(path)
    stats["final_step"] = iterations
    assert temp_files(run) == []  # temporary files of killed writes are cleaned up on resume
    return stats


def newest_step_fast(run: Path) -> int:
    """Newest checkpoint step by file name only (polled every few ms: no loading)."""
    files = ckpt.list_checkpoints(run)
    return int(files[-1].stem.split("_")[1]) if files else 0


@pytest.mark.slow
def test_sigkill_three_times_then_resume_finishes(tmp_path):
    """Three SIGKILLs (two at seeded random moments, one during a checkpoint write)."""
    stats = kill_and_resume(tmp_path, ["random", "write", "random"], iterations=10, seed=8)
    assert stats["kills"] == 3 and stats["final_step"] == 10
    print("kill/resume stats:", stats)


@pytest.mark.slow
@pytest.mark.long
def test_sigkill_twenty_times_including_during_checkpoint_writes(tmp_path):
    """Twenty SIGKILLs, every other one while a checkpoint is being written (HAGAN_LONG=1)."""
    kinds = ["random", "write"] * 10
    stats = kill_and_resume(tmp_path, kinds, iterations=60, seed=88)
    assert stats["kills"] == 20 and stats["final_step"] == 60
    print("kill/resume stats:", stats)


@pytest.mark.slow
def test_sigint_writes_a_checkpoint_and_exits_130(tmp_path):
    """Ctrl-C (SIGINT) after the first logged step: checkpoint at that step, exit code 130."""
    data = make_random_dataset(tmp_path / "data", n=4, size=32)
    run = tmp_path / "run"
    cmd = train_cmd(data, run, 100_000)
    cmd[cmd.index(f"checkpoint_every={EVERY}")] = "checkpoint_every=100000"
    proc = start(cmd)
    try:
        assert wait_for(proc, lambda: bool(logged_steps(run)), timeout=300, poll=0.05), \
            proc.communicate()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 128 + signal.SIGINT, (out, err)
    assert "stopped by SIGINT" in out and "checkpoint saved" in out
    assert "Traceback" not in err
    path, state = ckpt.latest_checkpoint(run)
    assert state["step"] == max(logged_steps(run)) >= 1
