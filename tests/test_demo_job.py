"""The `make demo` job (hagan.demo_job): argument checks, one-line errors, a tiny end-to-end run."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from hagan import demo_job, teaching
from hagan.config import PRESETS
from hagan.generate import sample_name


@pytest.mark.parametrize("argv, message", [
    (["--n", "2"], "--n: expected at least 3 volumes"),
    (["--iterations", "0"], "--iterations: expected at least 1, found 0"),
    (["--subjects", "8"], "unrecognized arguments: --subjects"),  # the count is --n everywhere
])
def test_bad_arguments_are_refused_before_any_work(argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as refused:
        demo_job.main(["--out", str(tmp_path / "out"), *argv])
    assert refused.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_an_unusable_output_folder_is_one_line_naming_it(tmp_path, capsys):
    taken = tmp_path / "taken"
    taken.write_text("a file where the output folder should go")
    assert demo_job.main(["--out", str(taken), "--iterations", "1", "--no-notebooks"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("make demo: error:") and str(taken) in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert taken.read_text() == "a file where the output folder should go"


@pytest.mark.slow  # cohort, 2 iterations, 8 samples, 2 figures: 15-35 s on 2 CPU cores
def test_tiny_run_writes_everything_the_summary_lists(tmp_path, capsys):
    out = tmp_path / "demo"
    assert demo_job.run(out, iterations=2, n_subjects=3, seed=0, notebooks=False) == 0
    text = capsys.readouterr().out
    assert "[4/4] notebooks skipped" in text and "executed notebooks" not in text
    summary = text.split("Results:")[1]
    # the cohort and the model lie where the notebooks look for them (notebook_work)
    work = out / "notebook_work"
    for path in (teaching.demo_path(work, 32), out / "samples", out / "real_vs_generated.png",
                 out / "losses.png", teaching.run_path(work, "demo32") / "metrics.jsonl"):
        assert str(path) in summary and path.exists(), path
    checkpoint = re.search(r"checkpoint\s+(\S+)", summary)
    assert checkpoint and Path(checkpoint.group(1)).is_file()
    samples = sorted(p.name for p in (out / "samples").iterdir())
    assert samples == [sample_name(i) for i in range(8)]  # the names `hagan generate` uses
    assert (out / "real_vs_generated.png").stat().st_size > 0


def test_demo_and_cpu_notebooks_use_one_model():
    """make demo trains the model the cpu-scale notebooks would train: same preset, cohort size
    and iterations, so notebooks 03-06 reuse it instead of training a weaker one."""
    cpu = teaching.settings(scale="cpu", verbose=False)
    parser_defaults = vars(demo_job.build_parser().parse_args([]))
    assert cpu.preset == demo_job.PRESET == "demo32"
    assert cpu.n_subjects == parser_defaults["n"]
    assert cpu.iterations == parser_defaults["iterations"] == PRESETS["demo32"]["iterations"]
    # Binder's image prebuilds the cpu cohorts: the same size, so the notebooks reuse them
    postbuild = (Path(__file__).parents[1] / "binder" / "postBuild").read_text(encoding="utf-8")
    sizes = re.findall(r"demo-data --out \S+ --n (\d+) --size (\d+)", postbuild)
    assert sizes and all((int(n), int(size)) == (cpu.n_subjects, 32) for n, size in sizes)
