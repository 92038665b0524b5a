"""Bad inputs to every ``hagan`` subcommand: one clear line, a non-zero exit, nothing clobbered.

One table (``CASES``) of bad inputs for ``hagan preprocess``, ``train``, ``generate``,
``evaluate`` and ``import-official``: missing and empty folders, wrong sizes, 2D/4D NIfTI
images, NaN volumes, wrong label files, manifests that point outside the data folder, a
checkpoint of another size or class count, files that are not checkpoints, unknown ``--set``
keys and out-of-range values.

Each case runs in-process through ``hagan.cli.main`` (fast) and must

* return the expected exit code (2 for usage and input errors, 3 for a NaN during training),
* print exactly one line on stderr, naming the problem (a regex per case), with no traceback,
* leave existing results alone: where the command has an output, a sentinel file sits where
  the output would go and its bytes must be unchanged afterwards.

Two cases also run through a real ``python -m hagan`` process, where stderr also holds log
output, to check the whole stream is one line there too.
"""

from __future__ import annotations

import hashlib
import pickle
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import make_random_dataset, run_cli

from hagan import checkpoint as ckpt
from hagan.cli import main
from hagan.config import preset
from hagan.data import Record, write_info, write_manifest
from hagan.fileio import atomic_save_npy
from hagan.models import build_models


class _Payload:
    """Unpickling this object would create a file: the proof that code ran."""

    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


def _nifti(path: Path, array: np.ndarray) -> Path:
    import nibabel as nib

    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array.astype(np.float32), np.eye(4)), str(path))
    return path


def _blob(shape=(20, 24, 16)) -> np.ndarray:
    grids = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    r = np.sqrt(sum(g**2 for g in grids))
    return np.where(r < 0.8, 500 + 400 * (0.8 - r), 0.0)


def _dataset_with_files(root: Path, names: list[str]) -> Path:
    """A prepared 32^3 dataset whose manifest lists ``names`` (vol_000.npy exists)."""
    atomic_save_npy(root / "volumes" / "vol_000.npy", np.zeros((32, 32, 32), np.float16))
    write_manifest(root, [Record(file=n) for n in names])
    write_info(root, {"size": 32, "label_names": []})
    return root


@pytest.fixture(scope="module")
def w(tmp_path_factory) -> dict[str, Path]:
    """Inputs shared by all cases (built once): datasets, checkpoints, images, bad files."""
    root = tmp_path_factory.mktemp("bad_inputs")
    f: dict[str, Path] = {"root": root}
    f["data"] = make_random_dataset(root / "data", n=4, size=32)
    f["data3"] = make_random_dataset(root / "data3", n=3, size=32, labels=["a", "b", "c"])
    f["empty_dir"] = root / "empty"
    f["empty_dir"].mkdir()
    f["a_file"] = root / "notes.txt"
    f["a_file"].write_text("hello\n")
    f["empty_file"] = root / "empty.pt"
    f["empty_file"].write_bytes(b"")
    f["foreign"] = root / "foreign.pt"
    torch.save({"model": {"w": torch.zeros(1)}}, f["foreign"])
    f["evil"] = root / "evil.pt"
    f["marker"] = root / "pwned"
    torch.save({"kind": ckpt.KIND, "payload": _Payload(str(f["marker"]))}, f["evil"],
               pickle_protocol=pickle.HIGHEST_PROTOCOL)

    # checkpoints: a good 32^3 model, a 2-class 32^3 model, a 64^3 model, and a file whose
    # config says 64^3 but whose weights are 32^3
    cfg = preset("tiny32", data=str(f["data"]))
    nets = build_models(cfg)
    f["ckpt"] = ckpt.save_models(root / "tiny32.pt", cfg, nets)
    cfg2 = preset("tiny32", num_classes=2)
    f["ckpt_c2"] = ckpt.save_models(root / "tiny32_c2.pt", cfg2, build_models(cfg2))
    cfg64 = preset("small64")
    f["ckpt64"] = ckpt.save_models(root / "small64.pt", cfg64, build_models(cfg64))
    f["ckpt_misfit"] = ckpt.save_checkpoint(root / "misfit.pt", {
        "config": cfg64.to_dict(), "step": 0, "models": {"G": nets["G"].state_dict()}})

    # datasets broken in different ways
    f["no_info"] = root / "no_info"
    (f["no_info"] / "volumes").mkdir(parents=True)
    f["empty_manifest"] = _dataset_with_files(root / "empty_manifest", [])
    f["escape_rel"] = _dataset_with_files(root / "escape_rel", ["vol_000.npy", "../../etc/passwd"])
    f["escape_abs"] = _dataset_with_files(root / "escape_abs", ["/etc/passwd"])
    f["missing_vol"] = _dataset_with_files(root / "missing_vol", ["vol_000.npy", "gone.npy"])
    f["bad_shape"] = _dataset_with_files(root / "bad_shape", ["small.npy"])
    atomic_save_npy(f["bad_shape"] / "volumes" / "small.npy", np.zeros((16, 16, 16), np.float16))
    f["nan_data"] = _dataset_with_files(root / "nan_data", ["vol_000.npy"])
    atomic_save_npy(f["nan_data"] / "volumes" / "vol_000.npy",
                    np.full((32, 32, 32), np.nan, np.float16))

    # raw images for preprocess
    f["in_2d"] = _nifti(root / "in_2d" / "slice.nii.gz", _blob((20, 24))).parent
    f["in_4d"] = _nifti(root / "in_4d" / "fmri.nii.gz",
                        np.stack([_blob()] * 3, axis=-1)).parent
    f["in_nan"] = _nifti(root / "in_nan" / "nan.nii.gz", np.full((20, 24, 16), np.nan)).parent
    f["in_good"] = _nifti(root / "in_good" / "head.nii.gz", _blob()).parent
    f["labels_no_header"] = root / "labels_bad.csv"
    f["labels_no_header"].write_text("head.nii.gz\n")
    f["labels_unknown"] = root / "labels_unknown.csv"
    f["labels_unknown"].write_text("file,label\nhead.nii.gz,a\nother.nii.gz,b\n")
    f["labels_empty"] = root / "labels_empty.csv"
    f["labels_empty"].write_text("file,label\nhead.nii.gz,\n")
    return f


@dataclass
class Case:
    id: str
    argv: object  # (w, tmp) -> list[str]
    match: str  # regex the stderr line must match
    code: int = 2
    sentinel: object = None  # (w, tmp) -> Path: a file that must keep its bytes
    marker: bool = False  # the case uses the evil pickle: its marker must not appear


def P(*a):  # noqa: N802 - a short builder for argv lambdas
    return [str(x) for x in a]


def _foreign_out(w, tmp):
    (tmp / "out").mkdir(exist_ok=True)
    return tmp / "out" / "mine.txt"


def _run_with(w, tmp, source: str) -> Path:
    """A run folder holding checkpoint ``source`` as its newest checkpoint."""
    target = ckpt.checkpoint_path(tmp / "run", 2)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(w[source], target)
    return target


def _sample_out(w, tmp):
    return tmp / "samples" / "sample_0000.nii.gz"


def _report_out(w, tmp):
    return tmp / "report.json"


def _official_out(w, tmp):
    return tmp / "kit.pt"


PREP = ["preprocess", "--size", "32", "--modality", "mri", "--no-progress"]
TRAIN = ["train", "--set", "iterations=2", "--set", "progress=False",
         "--set", "tensorboard=False", "--set", "image_every=0"]

CASES = [
    # --- hagan preprocess IN --out OUT --size S --modality M -------------------------------
    Case("prep-missing-input", lambda w, t: P(*PREP, w["root"] / "nope", "--out", t / "out"),
         r"input folder: expected an existing folder.*does not exist"),
    Case("prep-input-is-a-file", lambda w, t: P(*PREP, w["a_file"], "--out", t / "out"),
         r"\(not a folder\)"),
    Case("prep-empty-input", lambda w, t: P(*PREP, w["empty_dir"], "--out", t / "out"),
         "no image files found"),
    Case("prep-size-not-power-of-2", lambda w, t: P(*PREP[:2], "33", *PREP[3:], w["in_good"],
                                                    "--out", t / "out"), "cube side 2\\^k"),
    Case("prep-size-zero", lambda w, t: P(*PREP[:2], "0", *PREP[3:], w["in_good"], "--out",
                                          t / "out"),
         "cube side 2\\^k"),
    Case("prep-2d-image", lambda w, t: P(*PREP, w["in_2d"], "--out", t / "out"),
         "not 3D: a 2D image"),
    Case("prep-4d-image", lambda w, t: P(*PREP, w["in_4d"], "--out", t / "out"),
         "not 3D: 3 channels"),
    Case("prep-nan-volume", lambda w, t: P(*PREP, w["in_nan"], "--out", t / "out"),
         "all values are NaN"),
    Case("prep-labels-missing", lambda w, t: P(*PREP, w["in_good"], "--out", t / "out", "--labels",
                                               w["root"] / "nope.csv"),
         r"--labels: expected .*labels file .*does not exist"),
    Case("prep-labels-no-header", lambda w, t: P(*PREP, w["in_good"], "--out", t / "out",
                                                 "--labels",
                                                 w["labels_no_header"]), "expected a header"),
    Case("prep-labels-unknown-file", lambda w, t: P(*PREP, w["in_good"], "--out", t / "out",
                                                    "--labels",
                                                    w["labels_unknown"]), "not found in the input"),
    Case("prep-labels-empty-label", lambda w, t: P(*PREP, w["in_good"], "--out", t / "out",
                                                   "--labels",
                                                   w["labels_empty"]), "empty label"),
    Case("prep-foreign-out-folder", lambda w, t: P(*PREP, w["in_good"], "--out", t / "out"),
         "not empty and was not made by", sentinel=_foreign_out),
    Case("prep-workers-zero", lambda w, t: P(*PREP, w["in_good"], "--out", t / "out", "--workers",
                                             "0"),
         "--workers: expected a value >= 1"),
    Case("prep-window-reversed", lambda w, t: P(*PREP[:4], "ct", "--window", "5", "1",
                                                w["in_good"], "--out", t / "out"), "LOW < HIGH"),
    Case("prep-unknown-modality", lambda w, t: P(*PREP[:4], "pet", w["in_good"], "--out",
                                                 t / "out"),
         "invalid choice: 'pet'"),
    Case("prep-missing-size", lambda w, t: P("preprocess", "--modality", "ct", w["in_good"],
                                             "--out", t / "out"), "required: --size"),
    # --- hagan train --data DIR --out RUN [--set k=v] ---------------------------------------
    Case("train-missing-data", lambda w, t: P(*TRAIN, "--data", w["root"] / "nope", "--out",
                                              t / "run"), "data folder .* does not exist"),
    Case("train-no-data-given", lambda w, t: P(*TRAIN, "--out", t / "run"),
         "--data: expected a prepared dataset folder"),
    Case("train-not-a-dataset", lambda w, t: P(*TRAIN, "--data", w["no_info"], "--out", t / "run"),
         "dataset.json is missing"),
    Case("train-empty-manifest", lambda w, t: P(*TRAIN, "--data", w["empty_manifest"], "--out",
                                                t / "run"), "holds no volumes"),
    Case("train-wrong-size", lambda w, t: P(*TRAIN, "--preset", "small64", "--data", w["data"],
                                            "--out", t / "run"), "expects 64\\^3 volumes"),
    Case("train-manifest-escapes-relative", lambda w, t: P(*TRAIN, "--data", w["escape_rel"],
                                                           "--out", t / "run"),
         "'../../etc/passwd' points outside"),
    Case("train-manifest-escapes-absolute", lambda w, t: P(*TRAIN, "--data", w["escape_abs"],
                                                           "--out", t / "run"),
         "'/etc/passwd' points outside"),
    Case("train-missing-volume", lambda w, t: P(*TRAIN, "--data", w["missing_vol"], "--out",
                                                t / "run"), "listed in manifest.csv are missing"),
    Case("train-volume-wrong-shape", lambda w, t: P(*TRAIN, "--data", w["bad_shape"], "--out",
                                                    t / "run"), "shape \\(16, 16, 16\\)"),
    Case("train-nan-volume", lambda w, t: P(*TRAIN, "--set", "batch_size=1", "--data",
                                            w["nan_data"], "--out", t / "run"),
         "vol_000.npy: expected finite values, found NaN"),  # refused at start
    Case("train-unknown-preset", lambda w, t: P(*TRAIN, "--preset", "huge", "--data", w["data"],
                                                "--out", t / "run"),
         "preset: expected one of .*found 'huge'"),
    Case("train-unknown-set-key", lambda w, t: P(*TRAIN, "--data", w["data"], "--out", t / "run",
                                                 "--set", "learning_rate=1"),
         "config key: expected a Config field .*found 'learning_rate'"),
    Case("train-set-without-equals", lambda w, t: P(*TRAIN, "--data", w["data"], "--out",
                                                    t / "run", "--set", "iterations"),
         "--set: expected key=value"),
    Case("train-set-not-a-number", lambda w, t: P(*TRAIN, "--data", w["data"], "--out", t / "run",
                                                  "--set", "iterations=many"), "iterations"),
    Case("train-batch-size-zero", lambda w, t: P(*TRAIN, "--data", w["data"], "--out", t / "run",
                                                 "--set", "batch_size=0"),
         "batch_size: expected a value > 0"),
    Case("train-negative-lr", lambda w, t: P(*TRAIN, "--data", w["data"], "--out", t / "run",
                                             "--set", "lr_g=-1"), "lr_g"),
    Case("train-bad-precision", lambda w, t: P(*TRAIN, "--data", w["data"], "--out", t / "run",
                                               "--set", "precision=fp8"),
         "precision: expected one of"),
    Case("train-one-class", lambda w, t: P(*TRAIN, "--data", w["data"], "--out", t / "run",
                                           "--set", "num_classes=1"), "num_classes: expected 0"),
    Case("train-classes-vs-labels", lambda w, t: P(*TRAIN, "--data", w["data3"], "--out",
                                                   t / "run", "--set", "num_classes=2"),
         "model has 2 classes but .* has 3 label names"),
    Case("train-run-holds-other-size", lambda w, t: P(*TRAIN, "--data", w["data"], "--out",
                                                      t / "run"),
         "different model \\(size: checkpoint 64 vs requested 32",
         sentinel=lambda w, t: _run_with(w, t, "ckpt64")),
    Case("train-run-holds-other-classes", lambda w, t: P(*TRAIN, "--data", w["data3"], "--out",
                                                         t / "run", "--set", "num_classes=3"),
         "num_classes: checkpoint 2 vs requested 3",
         sentinel=lambda w, t: _run_with(w, t, "ckpt_c2")),
    Case("train-run-holds-other-critic", lambda w, t: P(*TRAIN, "--data", w["data"], "--out",
                                                        t / "run", "--set",
                                                        "low_res_critic=false"),
         "low_res_critic: checkpoint True vs requested False",
         sentinel=lambda w, t: _run_with(w, t, "ckpt")),
    # (--fresh over checkpoints is no bad input: it moves them aside, see test_run_integrity.py)
    Case("train-bad-set-keeps-run", lambda w, t: P(*TRAIN, "--data", w["data"], "--out",
                                                   t / "run", "--set", "log_every=0"),
         "log_every: expected a value > 0", sentinel=lambda w, t: _run_with(w, t, "ckpt")),
    Case("train-missing-out", lambda w, t: P("train", "--data", w["data"]),
         "required: --out"),
    # --- hagan generate CKPT --out DIR ------------------------------------------------------
    Case("gen-missing-checkpoint", lambda w, t: P("generate", w["root"] / "nope.pt", "--out",
                                                  t / "samples"), "does not exist",
         sentinel=_sample_out),
    Case("gen-not-a-checkpoint", lambda w, t: P("generate", w["a_file"], "--out", t / "samples"),
         "not written by torch.save", sentinel=_sample_out),
    Case("gen-empty-checkpoint", lambda w, t: P("generate", w["empty_file"], "--out",
                                                t / "samples"), "is empty", sentinel=_sample_out),
    Case("gen-foreign-torch-file", lambda w, t: P("generate", w["foreign"], "--out",
                                                  t / "samples"),
         "not a hagan-kit checkpoint.*import-official", sentinel=_sample_out),
    Case("gen-run-without-checkpoints", lambda w, t: P("generate", w["empty_dir"], "--out",
                                                       t / "samples"),
         "holds no loadable checkpoint", sentinel=_sample_out),
    Case("gen-weights-of-another-size", lambda w, t: P("generate", w["ckpt_misfit"], "--out",
                                                       t / "samples"),
         "weights do not fit a 64\\^3 model", sentinel=_sample_out),
    Case("gen-n-zero", lambda w, t: P("generate", w["ckpt"], "--n", "0", "--out", t / "samples"),
         "--n.*: expected (values|a whole number) >= 1"),  # argparse checks it now
    Case("gen-label-on-unconditional", lambda w, t: P("generate", w["ckpt"], "--label", "0",
                                                      "--out", t / "samples"),
         "unconditional", sentinel=_sample_out),
    Case("gen-conditional-without-label", lambda w, t: P("generate", w["ckpt_c2"], "--out",
                                                         t / "samples"),
         "Pass --label 0..1", sentinel=_sample_out),
    Case("gen-label-out-of-range", lambda w, t: P("generate", w["ckpt_c2"], "--label", "5",
                                                  "--out", t / "samples"),
         r"--label 5 \(out of range\).*0..1"),
    Case("gen-batch-size-zero", lambda w, t: P("generate", w["ckpt"], "--batch-size", "0",
                                               "--out", t / "samples"),
         "--batch-size: expected (values|a whole number) >= 1"),
    Case("gen-bad-device", lambda w, t: P("generate", w["ckpt"], "--device", "tpu", "--out",
                                          t / "samples"), "device: expected auto",
         sentinel=_sample_out),
    Case("gen-bad-precision", lambda w, t: P("generate", w["ckpt"], "--precision", "fp8", "--out",
                                             t / "samples"), "invalid choice: 'fp8'"),
    Case("gen-existing-samples", lambda w, t: P("generate", w["ckpt"], "--n", "1", "--out",
                                                t / "samples"), "already exists",
         sentinel=_sample_out),
    # --- hagan evaluate CKPT --data DIR -----------------------------------------------------
    Case("eval-missing-checkpoint", lambda w, t: P("evaluate", w["root"] / "nope.pt", "--data",
                                                   w["data"], "--n", "2", "--out",
                                                   t / "report.json", "--force"),
         "does not exist", sentinel=_report_out),
    Case("eval-n-one", lambda w, t: P("evaluate", w["ckpt"], "--data", w["data"], "--n", "1"),
         "--n: expected at least 2"),
    Case("eval-missing-data", lambda w, t: P("evaluate", w["ckpt"], "--data", w["root"] / "nope",
                                             "--n", "2", "--no-cache"), "does not exist"),
    Case("eval-checkpoint-of-another-size", lambda w, t: P("evaluate", w["ckpt64"], "--data",
                                                           w["data"], "--n", "2", "--no-cache",
                                                           "--out", t / "report.json",
                                                           "--force"),
         "64", sentinel=_report_out),
    Case("eval-existing-report", lambda w, t: P("evaluate", w["ckpt"], "--data", w["data"],
                                                "--n", "2", "--out", t / "report.json"),
         "already exists", sentinel=_report_out),
    Case("eval-medicalnet-without-weights", lambda w, t: P("evaluate", w["ckpt"], "--data",
                                                           w["data"], "--extractor",
                                                           "medicalnet10", "--n", "2"),
         "weights"),
    Case("eval-missing-weights-file", lambda w, t: P("evaluate", w["ckpt"], "--data", w["data"],
                                                     "--extractor", "medicalnet10", "--weights",
                                                     w["root"] / "resnet_10.pth", "--n", "2"),
         "does not exist"),
    Case("eval-not-a-checkpoint", lambda w, t: P("evaluate", w["a_file"], "--data", w["data"],
                                                 "--n", "2", "--no-cache"),
         "not written by torch.save"),
    # --- hagan import-official --size S --generator G.pth --out KIT.pt ----------------------
    Case("official-missing-generator", lambda w, t: P("import-official", "--size", "128",
                                                      "--generator", w["root"] / "G.pth",
                                                      "--out", t / "kit.pt", "--force"),
         "does not exist", sentinel=_official_out),
    Case("official-not-a-torch-file", lambda w, t: P("import-official", "--size", "128",
                                                     "--generator", w["a_file"], "--out",
                                                     t / "kit.pt", "--force"),
         "not a PyTorch file", sentinel=_official_out),
    Case("official-kit-checkpoint-given", lambda w, t: P("import-official", "--size", "128",
                                                         "--generator", w["ckpt"], "--out",
                                                         t / "kit.pt", "--force"),
         "no 'model' state dict", sentinel=_official_out),
    Case("official-unsupported-size", lambda w, t: P("import-official", "--size", "64",
                                                     "--generator", w["ckpt"], "--out",
                                                     t / "kit.pt"), "invalid choice: 64"),
    Case("official-existing-out", lambda w, t: P("import-official", "--size", "128",
                                                 "--generator", w["ckpt"], "--out", t / "kit.pt"),
         "already exists", sentinel=_official_out),
    Case("official-evil-pickle", lambda w, t: P("import-official", "--size", "128",
                                                "--generator", w["evil"], "--out", t / "kit.pt",
                                                "--force"),
         # refused either way; protocol-5 pickles are reported as "not a PyTorch file"
         "could run code|not a PyTorch file", sentinel=_official_out, marker=True),
]


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_clear_line(case: Case, w, tmp_path, capsys):
    """The case's command fails with its exit code and one matching stderr line, and leaves
    the sentinel output untouched."""
    import re

    sentinel = None
    if case.sentinel is not None:
        sentinel = case.sentinel(w, tmp_path)
        if not sentinel.exists():
            sentinel.parent.mkdir(parents=True, exist_ok=True)
            sentinel.write_bytes(b"earlier result, must survive\n" * 3)
        before = _digest(sentinel)
    argv = case.argv(w, tmp_path)
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse usage errors
        code = exc.code
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert code == case.code, (argv, code, out, err)
    assert len(lines) == 1, f"expected one stderr line, got:\n{err}"
    assert "Traceback" not in err
    assert re.search(case.match, lines[0]), lines[0]
    command = argv[0]
    assert lines[0].startswith(f"hagan {command}: error:"), lines[0]
    if sentinel is not None:
        assert sentinel.exists() and _digest(sentinel) == before, f"{sentinel} was changed"
    assert not w["marker"].exists(), "unpickling ran code"


@pytest.mark.parametrize("args, message", [
    (["train", "--data", "{root}/escape_rel", "--out", "{tmp}/run"], "points outside"),
    (["generate", "{root}/notes.txt", "--out", "{tmp}/samples"], "not written by torch.save"),
])
def test_bad_input_in_a_real_process_is_one_line(args, message, w, tmp_path):
    """Through ``python -m hagan``: the whole stderr (logging included) is one line."""
    argv = [a.format(root=w["root"], tmp=tmp_path) for a in args]
    proc: subprocess.CompletedProcess = run_cli(*argv, timeout=300)
    assert proc.returncode == 2, proc
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in proc.stderr, proc.stderr
