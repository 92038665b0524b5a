"""Locale independence: the kit's text files round-trip in a process whose locale is plain ASCII.

The kit writes and reads every text file as UTF-8 and decodes its subprocesses' output as UTF-8,
never in the process locale. The check runs in a child Python started with ``LC_ALL=C``,
without UTF-8 mode, C-locale coercion or ``PYTHONIOENCODING``: there the default text encoding
is ASCII, so any ``open``/``write_text``/``read_text``/``subprocess(text=True)`` of the kit that
drops ``encoding="utf-8"`` fails on the non-ASCII labels, notes and output below (paths
stay ASCII: in such a process the file-system encoding is ASCII as well).
The test therefore never depends on the locale of the process running pytest.
"""

from __future__ import annotations

import os
import subprocess
import sys

from helpers import REPO

# The child's source is ASCII (non-ASCII text as \u escapes): it is passed in a file.
CHILD = r'''
import json, locale, sys
from pathlib import Path

import numpy as np

enc = locale.getpreferredencoding(False)
assert "utf" not in enc.lower(), "the child should run with an ASCII locale, found " + enc
sys.stdout.reconfigure(errors="backslashreplace")  # run_command echoes non-ASCII output

from hagan import checkpoint as ckpt
from hagan.config import from_dict, preset, save_json
from hagan.data import (PreparedDataset, Record, read_info, read_manifest, validate_dataset,
                        write_info, write_manifest)
from hagan.fileio import atomic_save_npy, read_json
from hagan.teaching import run_command
from hagan.train import read_metrics, train

# paths stay ASCII: with an ASCII locale the file system encoding is ASCII too
base = Path(sys.argv[1]) / "work"
data = base / "data"
labels = ["gesund_\u00fc", "tumeur_\u00e9"]
rng = np.random.default_rng(0)
records = []
for i in range(4):
    name = "vol_%03d.npy" % i
    vol = rng.uniform(-1, 1, (32, 32, 32)).astype(np.float16)
    atomic_save_npy(data / "volumes" / name, vol)
    records.append(Record(file=name, label=labels[i % 2], source="s\u00fcd"))
write_manifest(data, records)
write_info(data, {"size": 32, "modality": "synthetic", "spacing_mm": [1.0, 1.0, 1.0],
                  "label_names": labels, "note": "\u00e9t\u00e9"})
assert [(r.file, r.label, r.source) for r in read_manifest(data)] == [
    (r.file, r.label, r.source) for r in records]
assert read_info(data)["note"] == "\u00e9t\u00e9"
validate_dataset(data, 32)
assert len(PreparedDataset(data, 32)) == 4

cfg = preset("tiny32", iterations=2, batch_size=2, log_every=1, checkpoint_every=2,
             image_every=0, tensorboard=False, progress=False, num_classes=2,
             holdout_fraction=0.0, data=str(data))
save_json(cfg, base / "config.json")
assert from_dict(read_json(base / "config.json")) == cfg

run = base / "run"
train(cfg, run)
assert from_dict(read_json(run / "config.json")).data == str(data)
assert [r["step"] for r in read_metrics(run)] == [1, 2]
ckpt.append_metrics(run / ckpt.METRICS_FILE, {"step": 3, "note": "\u00fc"})
assert read_metrics(run)[-1]["note"] == "\u00fc"

out = run_command([sys.executable, "-c", "print('\\u00e9\\u00fc')"], tail=0)
assert "\u00e9\u00fc" in out, ascii(out)
print("round trip ok")
'''


def test_kit_text_round_trip_under_an_ascii_locale(tmp_path):
    script = tmp_path / "child.py"
    script.write_text(CHILD, encoding="utf-8")
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONIOENCODING", "PYTHONUTF8", "LANGUAGE") and not k.startswith("LC_")}
    env.update(LC_ALL="C", LANG="C", PYTHONUTF8="0", PYTHONCOERCECLOCALE="0",
               OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(script), str(tmp_path)], cwd=REPO, env=env,
                          capture_output=True, timeout=300)
    output = (proc.stdout + proc.stderr).decode("utf-8", errors="replace")
    assert proc.returncode == 0, output[-3000:]
    assert "round trip ok" in output
