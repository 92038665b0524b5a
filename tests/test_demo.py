"""The offline demo cohort: format, determinism, lesions, CLI errors, loading."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest

from hagan import cli
from hagan.data import PreparedDataset
from hagan.demo import DEMO_SOURCE, demo_volume, is_built, make_demo_dataset, template_cube
from hagan.errors import ConfigError, RunError

SIZE = 32


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "cohort"
    return make_demo_dataset(out, n=6, size=SIZE, seed=0, lesion_fraction=0.5, progress=False,
                             workers=1)


def volumes(root):
    return [np.load(p) for p in sorted((root / "volumes").glob("*.npy"))]


def manifest(root):
    with open(root / "manifest.csv", newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_arrays_have_the_documented_format(demo):
    arrays = volumes(demo)
    assert len(arrays) == 6
    for a in arrays:
        assert a.shape == (SIZE,) * 3 and a.dtype == np.float16
        assert a.min() == -1.0 and a.max() <= 1.0
        assert np.all(a[0] == -1) and np.all(a[:, :, -1] == -1)  # background at the cube faces
        assert 0.15 < (a > -1).mean() < 0.8  # the brain fills a good part of the cube
    a = arrays[0].astype(np.float32)
    # axis 0 = inferior -> superior: the cerebellum/brainstem make the lower half narrower
    assert (a[: SIZE // 3] > -1).sum() < (a[SIZE // 3: 2 * SIZE // 3] > -1).sum()


def test_metadata(demo):
    info = json.loads((demo / "dataset.json").read_text())
    assert info["size"] == SIZE and info["modality"] == "mri" and info["source"] == DEMO_SOURCE
    assert info["seed"] == 0 and info["label_names"] == ["healthy", "lesion"]
    assert len(info["spacing_mm"]) == 3 and 5 < info["spacing_mm"][0] < 8  # ~209 mm / 32
    rows = manifest(demo)
    assert [r["file"] for r in rows] == [f"demo_{i:04d}.npy" for i in range(6)]
    assert sorted(r["label"] for r in rows) == ["0", "0", "0", "1", "1", "1"]


def test_prepared_dataset_loads_it(demo):
    data = PreparedDataset(demo, size=SIZE, num_classes=2)
    volume, label = data[0]
    assert tuple(volume.shape) == (1, SIZE, SIZE, SIZE) and label in (0, 1)
    assert sorted(data.labels) == [0, 0, 0, 1, 1, 1]
    assert len(PreparedDataset(demo, size=SIZE)) == 6


def test_lesions_are_bright_white_matter_blobs(demo):
    rows = manifest(demo)
    index = next(i for i, r in enumerate(rows) if r["label"] == "1")
    cube = template_cube(SIZE)
    with_lesion = demo_volume(cube, SIZE, 0, index, lesion=True)
    without = demo_volume(cube, SIZE, 0, index, lesion=False)
    assert np.array_equal(with_lesion, np.load(demo / "volumes" / rows[index]["file"]))
    lesion = (with_lesion.astype(np.float32) - without) > 0.1
    assert lesion.sum() >= 20  # a few voxels of radius at 32^3
    brain = with_lesion > -1
    assert with_lesion[lesion].mean() > with_lesion[brain & ~lesion].mean() + 0.3


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a = make_demo_dataset(tmp_path / "a", n=2, size=SIZE, seed=3, progress=False, workers=1)
    b = make_demo_dataset(tmp_path / "b", n=2, size=SIZE, seed=3, progress=False, workers=2)
    c = make_demo_dataset(tmp_path / "c", n=2, size=SIZE, seed=4, progress=False, workers=1)
    for x, y, z in zip(volumes(a), volumes(b), volumes(c)):
        assert x.tobytes() == y.tobytes()
        assert x.tobytes() != z.tobytes()
    assert volumes(a)[0].tobytes() != volumes(a)[1].tobytes()  # subjects differ


def test_rebuild_in_place_reuses_or_replaces(tmp_path):
    out = make_demo_dataset(tmp_path / "d", n=3, size=SIZE, progress=False, workers=1)
    stamp = (out / "volumes" / "demo_0000.npy").stat().st_mtime_ns
    make_demo_dataset(out, n=3, size=SIZE, progress=False, workers=1)  # same arguments: reused
    assert (out / "volumes" / "demo_0000.npy").stat().st_mtime_ns == stamp
    make_demo_dataset(out, n=2, size=SIZE, progress=False, workers=1)  # smaller: stale file gone
    assert sorted(p.name for p in (out / "volumes").iterdir()) == ["demo_0000.npy",
                                                                    "demo_0001.npy"]


@pytest.mark.parametrize("kwargs, match", [
    ({"size": 48}, r"--size: expected a cube side 2\^k in \[32, 256\].*found 48"),
    ({"n": 0}, "--n: expected at least one volume, found 0"),
    ({"lesion_fraction": 1.5}, r"--lesion-fraction: expected a fraction in \[0, 1\]"),
    ({"seed": -1}, "--seed: expected a seed >= 0"),
])
def test_bad_arguments(tmp_path, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        make_demo_dataset(tmp_path / "x", progress=False, **kwargs)
    assert not (tmp_path / "x").exists()


def test_is_built_is_the_recipe_check(demo, tmp_path):
    """The one recipe check (make_demo_dataset's reuse and the notebooks' ensure_demo): true
    only for the same arguments and with every volume file present."""
    assert is_built(demo, n=6, size=SIZE, seed=0, lesion_fraction=0.5)
    assert not is_built(demo, n=6, size=SIZE, seed=1, lesion_fraction=0.5)
    assert not is_built(demo, n=6, size=SIZE, seed=0, lesion_fraction=0.0)
    assert not is_built(tmp_path / "nothing", n=6, size=SIZE, seed=0)
    copy = tmp_path / "copy"
    shutil.copytree(demo, copy)
    (copy / "volumes" / "demo_0005.npy").unlink()
    assert not is_built(copy, n=6, size=SIZE, seed=0, lesion_fraction=0.5)


def test_refuses_a_foreign_non_empty_folder(tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(RunError, match="not a demo dataset.*--force"):
        make_demo_dataset(tmp_path, n=1, progress=False)
    assert (tmp_path / "mine.txt").read_text() == "keep me"


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert cli.main(["demo-data", "--out", str(tmp_path / "x"), "--size", "48"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("hagan demo-data: error:") and "48" in err and "\n" not in err
    (tmp_path / "y").mkdir()
    (tmp_path / "y" / "notes.txt").write_text("")
    assert cli.main(["demo-data", "--out", str(tmp_path / "y"), "--n", "1"]) == 2
    assert "--force" in capsys.readouterr().err


def test_cli_builds_and_says_where(tmp_path, capsys):
    out = tmp_path / "cli"
    code = cli.main(["demo-data", "--out", str(out), "--n", "2", "--size", "32",
                     "--lesion-fraction", "0.5", "--workers", "1", "--no-progress"])
    assert code == 0
    assert str(out.resolve()) in capsys.readouterr().out
    assert len(PreparedDataset(out, size=32, num_classes=2)) == 2
