"""Run integrity: the faults real runs meet must never lose, overwrite or misreport work.

One table (``CASES``), one case per kind of fault. Each case builds its input from a small
trained run (tiny32, 4 iterations, checkpoints at 2 and 4), runs the kit through
``hagan.cli.main`` or the Python API, and asserts outcomes only: exit codes, one line on stderr
without a traceback, which files exist and load, which bytes are unchanged. Message wording is
not asserted, except that a message names the file or part it is about.

Kinds: resume that fails open; pruning that counts unreadable checkpoints; checkpoints the
kit's own loader refuses; output folders without a lock; state that depends on the current
folder; a torn log line; generation that holds everything until the end; a stale evaluation
cache; full or read-only disks; unclear checkpoint content errors; a run folder inside a
dataset.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import REPO, make_random_dataset

from hagan import checkpoint as ckpt
from hagan.cli import main
from hagan.config import preset
from hagan.data import read_info, write_info
from hagan.fileio import atomic_save_npy, is_lock_file

EVERY = 2
TRAIN = ["--preset", "tiny32", "--set", f"checkpoint_every={EVERY}", "--set", "log_every=1",
         "--set", "batch_size=2", "--set", "progress=False", "--set", "tensorboard=False",
         "--set", "image_every=0"]


def digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def folder_digest(root: Path) -> dict[str, str]:
    """Every file's SHA-256 (the lock files a command leaves are not content)."""
    return {str(p.relative_to(root)): digest(p) for p in sorted(Path(root).rglob("*"))
            if p.is_file() and not is_lock_file(p)}


def logged_steps(run: Path) -> list[int]:
    return [r["step"] for r in ckpt.load_metrics_log(run / ckpt.METRICS_FILE)[0]]


@dataclass
class Env:
    data: Path  # a prepared 32^3 dataset (spacing 2.5 mm)
    heldout: Path  # another one, for `hagan evaluate --heldout`
    base: Path  # a run trained to iteration 4 (checkpoints 2 and 4), never modified
    tmp: Path  # this case's scratch folder
    capsys: pytest.CaptureFixture
    monkeypatch: pytest.MonkeyPatch

    def run_copy(self, name: str = "run") -> Path:
        return Path(shutil.copytree(self.base, self.tmp / name))

    def cli(self, *args: object, code: int | None = None) -> tuple[int, str, str]:
        """``hagan ARGS`` in this process: (exit code, stdout, stderr). Never a traceback; an
        error is one line on stderr."""
        self.capsys.readouterr()
        rc = main([str(a) for a in args])
        out, err = self.capsys.readouterr()
        assert "Traceback" not in err, err
        if rc != 0:
            assert len(err.strip().splitlines()) == 1, err
        if code is not None:
            assert rc == code, (rc, out, err)
        return rc, out, err

    def train(self, run: Path, iterations: int, *extra: object, data: bool = True,
              code: int | None = 0) -> tuple[int, str, str]:
        args = ["train", "--out", run, *TRAIN, "--set", f"iterations={iterations}", *extra]
        if data:
            args += ["--data", self.data]
        return self.cli(*args, code=code)


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("integrity")
    data = make_random_dataset(root / "data", n=4, size=32)
    write_info(data, {**read_info(data), "spacing_mm": [2.5, 2.5, 2.5]})
    base = root / "base"
    assert main(["train", "--data", str(data), "--out", str(base), *TRAIN,
                 "--set", "iterations=4"]) == 0
    assert [p.name for p in ckpt.list_checkpoints(base)] == ["ckpt_00000002.pt",
                                                            "ckpt_00000004.pt"]
    return data, base, make_random_dataset(root / "heldout", n=4, size=32, seed=9)


@pytest.fixture
def env(shared, tmp_path, capsys, monkeypatch) -> Env:
    monkeypatch.setenv("TQDM_DISABLE", "1")
    return Env(shared[0], shared[2], shared[1], tmp_path, capsys, monkeypatch)


def all_checkpoints_load(run: Path) -> list[int]:
    """Steps of the run's checkpoints; every one must load with the kit's loader."""
    return [int(ckpt.load_checkpoint(p)["step"]) for p in ckpt.list_checkpoints(run)]


def truncate(path: Path, by: int = 1000) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:-by])


# --- 1. resume fails closed -----------------------------------------------------------------
def resume_fails_closed(env: Env) -> None:
    run = env.run_copy()
    ckpt.checkpoint_path(run, 2).unlink()
    only = ckpt.checkpoint_path(run, 4)
    truncate(only)
    before = folder_digest(run)
    env.train(run, 6, code=2)  # refused: the damaged file is the run's only checkpoint
    assert folder_digest(run) == before  # nothing changed, the log is not wiped

    env.train(run, 2, "--fresh")  # an explicit fresh start moves the old files aside
    moved = [p for p in run.iterdir() if p.name.startswith("previous-")]
    assert len(moved) == 1
    for name, value in before.items():  # every old byte is still there, under previous-*/
        assert digest(moved[0] / name) == value, name
    assert all_checkpoints_load(run) == [2] and logged_steps(run) == [1, 2]


# --- 2. pruning counts only loadable checkpoints --------------------------------------------
def pruning_counts_only_good(env: Env) -> None:
    run = env.run_copy()
    four = ckpt.checkpoint_path(run, 4)
    damaged = {}
    for step in (20, 30):  # broken files numbered above anything the resumed run writes
        path = ckpt.checkpoint_path(run, step)
        path.write_bytes(four.read_bytes()[:-1000])
        damaged[path.name] = digest(path)
    truncate(four)
    damaged[four.name] = digest(four)
    _, out, _ = env.train(run, 8, "--set", "keep_checkpoints=2")
    assert all_checkpoints_load(run) == [6, 8]  # the newest good ones are kept, and load
    kept = {p.name.removesuffix(".damaged"): digest(p)
            for p in (run / ckpt.CHECKPOINT_DIR).glob("*.damaged")}
    assert kept == damaged  # the broken files are set aside, bytes intact, not counted
    assert str(ckpt.checkpoint_path(run, 8)) in out  # the file named at the end exists


# --- 3. everything the kit writes, its own loader reads -------------------------------------
def config_types_and_verified_saves(env: Env) -> None:
    from hagan.train import Trainer, train

    run = env.tmp / "run"
    cfg = preset("tiny32", iterations=np.int64(2), lr_g=np.float64(3e-4), data=env.data,
                 checkpoint_every=EVERY, progress=np.bool_(False), tensorboard=False,
                 image_every=0, batch_size=2, log_every=1)
    train(cfg, run)
    assert all_checkpoints_load(run) == [2]
    train(cfg.replace(iterations=4), run)  # resumes (does not start over)
    assert all_checkpoints_load(run) == [2, 4] and logged_steps(run) == [1, 2, 3, 4]
    with pytest.raises(ValueError):  # a non-plain value is refused when the config is made
        preset("tiny32", lr_g=[1e-4])

    # a state the loader would refuse is never written under a checkpoint's name
    trainer = Trainer(cfg, env.tmp / "run2")
    real = trainer.state_dict
    env.monkeypatch.setattr(trainer, "state_dict", lambda: {**real(), "extra": Path("x")})
    with pytest.raises(ValueError):
        trainer.save()
    assert ckpt.list_checkpoints(env.tmp / "run2") == []
    assert list((env.tmp / "run2" / ckpt.CHECKPOINT_DIR).iterdir()) == []  # no temp file left


# --- 4. one process per output folder --------------------------------------------------------
HOLD = ("import sys, time\nfrom hagan.fileio import lock_folder, lock_file\n"
        "(lock_file if sys.argv[2] == 'file' else lock_folder)(sys.argv[1], 'hagan test')\n"
        "print('locked', flush=True)\ntime.sleep(600)\n")


def hold_lock(target: Path, kind: str = "folder") -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(target), kind], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, encoding="utf-8")
    assert proc.stdout.readline().strip() == "locked", proc.communicate()
    return proc


def output_folders_are_locked(env: Env) -> None:
    run = env.run_copy()
    ckpt_file = ckpt.checkpoint_path(env.base, 4)
    raw = env.tmp / "raw"
    raw.mkdir()
    import nibabel as nib

    nib.save(nib.Nifti1Image(np.random.default_rng(0).random((20, 20, 20), np.float32),
                             np.eye(4)), str(raw / "a.nii.gz"))
    commands = {  # command -> (what it writes, the locked target, lock kind)
        "train": (run, ["train", "--out", run, *TRAIN, "--set", "iterations=6"], "folder"),
        "generate": (env.tmp / "g", ["generate", ckpt_file, "--n", "1", "--out", env.tmp / "g"],
                     "folder"),
        "preprocess": (env.tmp / "p", ["preprocess", raw, "--out", env.tmp / "p", "--size", "32",
                                       "--modality", "mri", "--no-progress"], "folder"),
        "demo-data": (env.tmp / "d", ["demo-data", "--out", env.tmp / "d", "--n", "2", "--size",
                                      "32", "--no-progress"], "folder"),
        "evaluate": (env.tmp / "r.json", ["evaluate", ckpt_file, "--data", env.data, "--heldout",
                                          env.heldout, "--n", "2", "--out", env.tmp / "r.json",
                                          "--no-cache"], "file"),
    }
    for name, (target, argv, kind) in commands.items():
        holder = hold_lock(target, kind)
        try:
            before = folder_digest(target) if target.is_dir() else {}
            env.cli(*argv, code=2)
            after = folder_digest(target) if target.is_dir() else {}
            assert after == before, name  # the second process wrote nothing
            assert not (target.is_file() or (kind == "file" and target.exists())), name
        finally:
            holder.kill()
            holder.communicate()
    env.cli(*commands["train"][1], code=0)  # free again once the holder is gone


# --- 5. nothing depends on the current folder ------------------------------------------------
def independent_of_current_folder(env: Env) -> None:
    import nibabel as nib

    work = env.tmp / "work"
    shutil.copytree(env.data, work / "demo")
    other = make_random_dataset(env.tmp / "elsewhere", n=4, size=32, seed=3)  # 1 mm, other data
    env.monkeypatch.chdir(work)
    env.cli("train", "--data", "demo", "--out", env.tmp / "run", *TRAIN, "--set",
            "iterations=2", code=0)
    env.monkeypatch.chdir(other)  # another dataset is the current folder now
    env.cli("generate", env.tmp / "run", "--n", "1", "--out", env.tmp / "g", code=0)
    zooms = nib.load(str(env.tmp / "g" / "sample_0000.nii.gz")).header.get_zooms()
    assert np.allclose(zooms, 2.5)  # the training data's voxel size, not 1 mm
    env.cli("train", "--out", env.tmp / "run", *TRAIN, "--set", "iterations=4", code=0)
    state = ckpt.load_checkpoint(ckpt.checkpoint_path(env.tmp / "run", 4))
    assert Path(state["config"]["data"]) == (work / "demo").resolve()  # not the cwd's dataset
    assert ckpt.run_data_geometry(state)["spacing_mm"] == [2.5, 2.5, 2.5]

    (work / "demo").rename(work / "moved")  # a moved dataset: one line, nothing written
    before = folder_digest(env.tmp / "run")
    env.cli("train", "--out", env.tmp / "run", *TRAIN, "--set", "iterations=6", code=2)
    assert folder_digest(env.tmp / "run") == before


# --- 6. a torn log line ----------------------------------------------------------------------
def torn_log_line(env: Env) -> None:
    run = env.run_copy()
    with open(run / ckpt.METRICS_FILE, "a", encoding="utf-8") as fh:
        fh.write('{"step": 3, "loss_d": 1.2')  # what a crash or a full disk leaves
    env.train(run, 6)
    assert logged_steps(run) == [1, 2, 3, 4, 5, 6] and all_checkpoints_load(run)[-1] == 6

    damaged = env.run_copy("run2")  # damage that is not a torn last line: refused, untouched
    lines = (damaged / ckpt.METRICS_FILE).read_text(encoding="utf-8").splitlines(True)
    lines[1] = "garbage\n"
    (damaged / ckpt.METRICS_FILE).write_text("".join(lines), encoding="utf-8")
    before = folder_digest(damaged)
    env.train(damaged, 6, code=2)
    assert folder_digest(damaged) == before


# --- 7. generation streams to disk and can be completed --------------------------------------
def generate_streams_and_completes(env: Env) -> None:
    import hagan.generate as gen
    from hagan.data import load_nifti

    calls: list[int] = []
    real_sample, real_save = gen.sample, gen.save_nifti

    def counting_sample(G, n, *args, **kwargs):
        calls.append(n)
        return real_sample(G, n, *args, **kwargs)

    saved: list[Path] = []

    def failing_save(volume, path, *args, **kwargs):
        if len(saved) == 2:
            raise KeyboardInterrupt  # Ctrl-C while writing the third volume
        saved.append(Path(path))
        return real_save(volume, path, *args, **kwargs)

    env.monkeypatch.setattr(gen, "sample", counting_sample)
    env.monkeypatch.setattr(gen, "save_nifti", failing_save)
    out = env.tmp / "g"
    argv = ["generate", env.base, "--n", "4", "--out", out, "--seed", "3"]
    env.cli(*argv, code=130)
    assert max(calls) == 1  # one volume at a time: memory does not grow with --n
    names = sorted(p.name for p in out.glob("sample_*"))
    assert names == ["sample_0000.nii.gz", "sample_0001.nii.gz"]  # whole files only
    assert not [p for p in out.iterdir() if ".tmp" in p.name]
    first = {n: digest(out / n) for n in names}

    saved.clear()
    env.monkeypatch.setattr(gen, "save_nifti", real_save)
    env.cli(*argv, code=0)  # the same command completes the run
    assert {n: digest(out / n) for n in names} == first  # finished files were kept
    assert sorted(p.name for p in out.glob("sample_*")) == [f"sample_{i:04d}.nii.gz"
                                                           for i in range(4)]
    env.cli("generate", env.base, "--n", "4", "--out", env.tmp / "ref", "--seed", "3", code=0)
    for i in range(4):  # the completed set is the one an uninterrupted run writes
        name = f"sample_{i:04d}.nii.gz"
        assert np.array_equal(load_nifti(out / name), load_nifti(env.tmp / "ref" / name))
    env.cli("generate", env.base, "--n", "4", "--out", out, "--seed", "4", code=2)  # other seed


# --- 8. the evaluation cache follows the volumes' content -------------------------------------
def evaluation_cache_follows_content(env: Env) -> None:
    from hagan import metrics
    from hagan.fileio import read_json

    data = Path(shutil.copytree(env.data, env.tmp / "data"))
    evaluate = ["evaluate", ckpt.checkpoint_path(env.base, 4), "--data", data, "--heldout",
                env.heldout, "--n", "4", "--permutations", "0", "--pairs", "2", "--device",
                "cpu"]
    env.cli(*evaluate, "--out", env.tmp / "r1.json", code=0)
    rng = np.random.default_rng(1)
    for vol in sorted((data / "volumes").glob("*.npy")):  # re-prepared: same names and shapes
        atomic_save_npy(vol, rng.uniform(-1, 1, (32, 32, 32)).astype(np.float16))
    env.cli(*evaluate, "--out", env.tmp / "r2.json", code=0)
    env.cli(*evaluate, "--out", env.tmp / "r3.json", "--no-cache", code=0)
    r1, r2, r3 = (read_json(env.tmp / f"r{i}.json") for i in (1, 2, 3))
    assert r2["data_sha256"] != r1["data_sha256"]
    assert r2["metrics"]["fid"] == r3["metrics"]["fid"] != r1["metrics"]["fid"]
    assert r2["metrics"]["ms_ssim"]["real"] == r3["metrics"]["ms_ssim"]["real"]

    bad = env.tmp / "cache" / "features_x.npz"  # non-finite values are never cached
    values = metrics.cached(bad, "x", lambda: np.array([[1.0, np.nan]]))
    assert np.isnan(values).any() and not bad.exists()


# --- 9. full and read-only disks --------------------------------------------------------------
def _mount(point: Path, options: str) -> bool:
    point.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)],
                          capture_output=True).returncode == 0


def _umount(point: Path) -> None:
    subprocess.run(["umount", "-l", str(point)], capture_output=True)


def full_and_read_only_disks(env: Env) -> None:
    ro, full = env.tmp / "ro", None
    if os.geteuid() != 0:
        ro.mkdir()
        ro.chmod(0o555)
    else:  # root ignores permissions: use small tmpfs mounts, read-only and nearly full
        full = env.tmp / "full"
        if not (_mount(ro, "size=1m,ro") and _mount(full, "size=256k")):
            _umount(ro)
            _umount(full)
            pytest.skip("cannot mount a tmpfs here (needs root and mount rights)")
    try:
        if full is not None:
            try:
                with open(full / "filler", "wb", buffering=0) as fh:  # fill it up
                    while True:
                        fh.write(b"x" * 4096)
            except OSError:
                pass
        ckpt_file = ckpt.checkpoint_path(env.base, 4)
        run = env.run_copy()
        before = folder_digest(run)
        raw = env.tmp / "raw"
        raw.mkdir()
        import nibabel as nib

        blob = np.random.default_rng(0).random((20, 20, 20)).astype(np.float32)
        nib.save(nib.Nifti1Image(blob, np.eye(4)), str(raw / "a.nii.gz"))
        # read-only; completely full; then full but for 12 KiB (the lock and small files fit,
        # the checkpoint, the samples or the volumes do not)
        targets = [(ro, 4), (full, 4), (full, 3)] if full is not None else [(ro, 4)]
        for where, n_commands in targets:
            if n_commands == 3:
                with open(full / "filler", "rb+") as fh:
                    fh.truncate(max(0, (full / "filler").stat().st_size - 12288))
            cases = [
                ["train", "--data", env.data, "--out", where / "run", *TRAIN,
                 "--set", "iterations=2"],
                ["generate", ckpt_file, "--n", "2", "--out", where / "g"],
                ["preprocess", raw, "--out", where / "p", "--size", "32", "--modality", "mri",
                 "--no-progress"],
                ["evaluate", ckpt_file, "--data", env.data, "--heldout", env.heldout, "--n",
                 "4", "--permutations", "0", "--pairs", "2", "--no-cache", "--out",
                 where / "r.json"],
            ][:n_commands]
            for argv in cases:
                rc, _, err = env.cli(*argv)
                assert rc != 0 and str(where) in err, (argv, err)  # names the path
            for p in where.rglob("*"):  # whatever was written there loads or is a folder/log
                if p.suffix == ".pt":
                    ckpt.load_checkpoint(p)
        assert folder_digest(run) == before  # nothing outside the outputs changed
    finally:
        if full is not None:
            for d in (ro, full):
                _umount(d)
        else:
            ro.chmod(0o755)


def disk_fills_during_training(env: Env) -> None:
    """ENOSPC while a checkpoint is written mid-run: exit 1 naming the file, the previous
    checkpoints and the log stay whole (simulated: works as any user)."""
    import hagan.fileio as fileio

    run = env.run_copy()
    real_replace = os.replace
    calls = {"n": 0}

    def full_disk(src, dst, *a, **k):
        if str(dst).endswith(".pt"):
            calls["n"] += 1
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_replace(src, dst, *a, **k)

    env.monkeypatch.setattr(fileio.os, "replace", full_disk)
    rc, _, err = env.train(run, 8, code=None)
    env.monkeypatch.setattr(fileio.os, "replace", real_replace)
    assert rc == 1 and calls["n"] == 1 and str(ckpt.checkpoint_path(run, 6)) in err
    assert all_checkpoints_load(run) == [2, 4]
    assert not [p for p in (run / ckpt.CHECKPOINT_DIR).iterdir() if ".tmp" in p.name]
    env.train(run, 8)  # space again: it resumes from 4 and finishes
    assert all_checkpoints_load(run)[-1] == 8 and logged_steps(run) == list(range(1, 9))


# --- 10. checkpoint content errors name what is missing -------------------------------------
def checkpoint_content_errors(env: Env) -> None:
    base = ckpt.load_checkpoint(ckpt.checkpoint_path(env.base, 4))

    def variant(name: str, change: Callable[[dict], None]) -> Path:
        state = {k: v for k, v in base.items() if k not in ("kind", "format_version")}
        state["models"] = {k: dict(v) for k, v in state["models"].items()}
        change(state)
        run = env.tmp / name
        path = ckpt.checkpoint_path(run, 4)
        path.parent.mkdir(parents=True)
        torch.save({"kind": ckpt.KIND, "format_version": 1, **state}, path)
        return run

    key = next(iter(base["models"]["G"]))
    cases = {
        "missing-weights": (lambda s: s["models"]["G"].pop(key), key),
        "extra-weights": (lambda s: s["models"]["G"].update(stray=torch.zeros(1)), "stray"),
        "missing-part": (lambda s: s.pop("optimizers"), "optimizers"),
        "missing-network": (lambda s: s["models"].pop("SubE"), "SubE"),
    }
    for name, (change, named) in cases.items():
        run = variant(name, change)
        before = folder_digest(run)
        _, _, err = env.train(run, 6, code=2)
        assert named in err, (name, err)
        assert folder_digest(run) == before
        if name.endswith("weights"):
            _, _, err = env.cli("generate", ckpt.checkpoint_path(run, 4), "--n", "1", "--out",
                                env.tmp / f"g-{name}", code=2)
            assert named in err, (name, err)

    tiny = env.tmp / "tiny" / ckpt.CHECKPOINT_DIR / "ckpt_00000004.pt"
    tiny.parent.mkdir(parents=True)
    tiny.write_bytes(b"PK\x03")  # 3 bytes of garbage: damaged, not an attack
    _, _, err = env.cli("generate", tiny, "--n", "1", "--out", env.tmp / "g3", code=2)
    assert "run code" not in err and str(tiny) in err
    env.train(tiny.parent.parent, 6, code=2)


# --- 11. a run folder inside a dataset -------------------------------------------------------
def run_folder_in_dataset(env: Env) -> None:
    data = Path(shutil.copytree(env.data, env.tmp / "data"))
    before = folder_digest(data)
    env.cli("train", "--data", data, "--out", data, *TRAIN, "--set", "iterations=2", code=2)
    assert folder_digest(data) == before and not (data / ckpt.CHECKPOINT_DIR).exists()


@dataclass
class Case:
    kind: str
    check: Callable[[Env], None]
    slow: bool = False


CASES = [
    # slow: over ~10 s on 2 CPU cores (make test-fast must stay under 3 minutes)
    Case("1-resume-fails-closed", resume_fails_closed, slow=True),
    Case("2-pruning-counts-only-good", pruning_counts_only_good, slow=True),
    Case("3-config-types-and-verified-saves", config_types_and_verified_saves, slow=True),
    Case("4-output-folders-are-locked", output_folders_are_locked, slow=True),
    Case("5-independent-of-current-folder", independent_of_current_folder, slow=True),
    Case("6-torn-log-line", torn_log_line),
    Case("7-generate-streams-and-completes", generate_streams_and_completes),
    Case("8-evaluation-cache-follows-content", evaluation_cache_follows_content, slow=True),
    Case("9-full-and-read-only-disks", full_and_read_only_disks, slow=True),
    Case("9-disk-fills-during-training", disk_fills_during_training, slow=True),
    Case("10-checkpoint-content-errors", checkpoint_content_errors),
    Case("11-run-folder-in-dataset", run_folder_in_dataset),
]


@pytest.mark.parametrize("case", [pytest.param(c, id=c.kind, marks=[pytest.mark.slow]
                                               if c.slow else []) for c in CASES])
def test_fault(case: Case, env: Env) -> None:
    start = time.perf_counter()
    case.check(env)
    print(f"{case.kind}: {time.perf_counter() - start:.1f} s")
