"""The teaching notebooks: hygiene and structure (fast), and a papermill run of every notebook and
solution in smoke mode (slow), in order, sharing one work dir under ``build/notebooks``.

Also checks that ``binder/``, ``environment.yml`` and ``pyproject.toml`` list the same
dependencies.
"""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

import nbformat
import pytest

from hagan.notebook_runner import SOLUTIONS, NotebookError, notebook_paths, run_all, run_notebook

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = REPO / "notebooks"
NOTEBOOKS = notebook_paths(NOTEBOOK_DIR)
MAIN = [p for p in NOTEBOOKS if p.parent.name != SOLUTIONS]
BUILD = REPO / "build" / "notebooks"
WORK = BUILD / "work"
MAX_CODE_LINES = 15  # house style: notebook code cells <= ~15 lines
MAX_OUTPUT_LINES = 100  # house style (as MONAI's NB_OUTPUT_LINE_CAP)


def _pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib") if sys.version_info >= (3, 11) else \
        pytest.importorskip("tomli")
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]


# The repository URL is written once, in pyproject.toml's [project.urls]; everything else derives.
# (Read with a regex so that these module constants need no TOML parser on Python 3.10.)
_TOML = (REPO / "pyproject.toml").read_text(encoding="utf-8")
REPO_URL = re.search(r'^\[project\.urls\][^\[]*?^Repository = "([^"]+)"', _TOML, re.M | re.S)[1]
SLUG = REPO_URL.removeprefix("https://github.com/")  # owner/name
VERSION = re.search(r'^version = "([^"]+)"', _TOML, re.M)[1]
COLAB = f"https://colab.research.google.com/github/{SLUG}/blob/main/notebooks/"
BINDER = f"https://mybinder.org/v2/gh/{SLUG}/HEAD?labpath=notebooks%2F"
COLAB_KIT = f"hagan-kit @ git+{REPO_URL}@v{VERSION}"  # what the Colab install cell pins
EXPECTED_NAMES = ["00_setup_and_data_tour", "01_preprocessing_with_torchio",
                  "02_the_hierarchical_idea", "03_training", "04_inference", "05_evaluation",
                  "06_feature_analysis", "07_scaling_up"]

# Files each notebook must leave in the work dir in smoke mode (tiny32, 32^3), as globs.
EXPECTED_OUTPUTS = {
    "00_setup_and_data_tour": ["demo32/dataset.json", "demo32/volumes/demo_0007.npy",
                               "figures/00_three_subjects.png", "figures/00_histograms.png"],
    "01_preprocessing_with_torchio": ["prepared_ct32/dataset.json", "prepared_ct32/volumes/*.npy",
                                      "prepared_mri32/volumes/mni152_t1.npy",
                                      "figures/01_windows.png"],
    "02_the_hierarchical_idea": ["step_costs.json", "memory_counts.json",
                                 "figures/02_step_costs.png",
                                 "figures/02_slab.png", "figures/02_coverage.png"],
    "03_training": ["run_tiny32/checkpoints/ckpt_*.pt", "run_tiny32/metrics.jsonl",
                    "figures/03_losses.png", "figures/03_real_vs_generated.png",
                    "figures/03_diversity.png"],
    "04_inference": ["samples/sample_0000.nii.gz", "run_tiny32_conditional/checkpoints/ckpt_*.pt",
                     "figures/04_conditional.png", "figures/04_interpolation.png",
                     "figures/04_nifti.png"],
    "05_evaluation": ["report_tiny32.json", "figures/05_metrics.png"],
    "06_feature_analysis": ["figures/06_pca.png", "figures/06_mds.png",
                            "figures/06_traversal.png"],
    "07_scaling_up": ["run_ddp_demo/checkpoints/ckpt_*.pt", "figures/07_precision.png"],
    "00_setup_and_data_tour_solutions": ["exercise_demo64/dataset.json",
                                         "figures/sol00_lesion.png"],
    "01_preprocessing_with_torchio_solutions": ["exercise_ct_messy_out/report.csv",
                                                "figures/sol01_resolution.png"],
    "02_the_hierarchical_idea_solutions": ["figures/sol02_slab_depth.png"],
    "03_training_solutions": ["figures/sol03_anchor.png", "figures/sol03_losses_equal.png"],
    "04_inference_solutions": ["figures/sol04_label_effect.png"],
    "05_evaluation_solutions": ["figures/sol05_fid_vs_n.png", "figures/sol05_ms_ssim_noise.png"],
    "06_feature_analysis_solutions": ["figures/sol06_lesion_pca.png",
                                      "figures/sol06_traversal_d2.png"],
    "07_scaling_up_solutions": [],
}


def _read(path: Path) -> nbformat.NotebookNode:
    return nbformat.read(path, as_version=4)


def _ids(paths: list[Path]) -> list[str]:
    return [p.stem for p in paths]


# --- fast: what is committed ---------------------------------------------------------------------
def test_the_notebooks_and_their_solutions_exist():
    assert [p.stem for p in MAIN] == EXPECTED_NAMES
    solutions = [p.stem for p in NOTEBOOKS if p.parent.name == SOLUTIONS]
    assert solutions == [f"{name}_solutions" for name in EXPECTED_NAMES]
    assert set(EXPECTED_OUTPUTS) == {p.stem for p in NOTEBOOKS}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_committed_without_outputs(path):
    for cell in _read(path).cells:
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{path.name}: a code cell has outputs; strip them"
            assert cell.execution_count is None, f"{path.name}: execution counts left in"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_parameters_cell(path):
    import papermill as pm

    cells = _read(path).cells
    tagged = [i for i, c in enumerate(cells) if "parameters" in c.metadata.get("tags", [])]
    assert tagged == [1], f"{path.name}: exactly one parameters cell, right after the title"
    params = pm.inspect_notebook(str(path))
    assert {"work_dir", "smoke"} <= set(params), f"{path.name}: parameters {list(params)}"
    assignments = [ln for ln in cells[1].source.splitlines() if re.match(r"^\w+ = ", ln)]
    assert len(params) == len(assignments), (
        f"{path.name}: papermill parses {list(params)} but the cell assigns {len(assignments)} "
        "names; a '=' inside a comment hides a parameter from papermill")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_cell_order(path):
    """Title and "you will learn" -> parameters -> setup -> sections -> "Next" (house style)."""
    cells = _read(path).cells
    title = cells[0]
    assert title.cell_type == "markdown" and title.source.startswith("# ")
    assert "you will learn" in title.source.lower(), f"{path.name}: say what students will learn"
    setup = cells[2]
    assert setup.cell_type == "code"
    assert "print_env()" in setup.source and "seed_everything(seed)" in setup.source
    assert "'google.colab' in sys.modules" in setup.source.replace('"', "'")
    assert "pip" in setup.source, f"{path.name}: the setup cell must install the kit on Colab"
    last = cells[-1]
    assert last.cell_type == "markdown" and last.source.startswith("## Next")
    if path.parent.name != SOLUTIONS:
        headings = [c.source.splitlines()[0] for c in cells if c.cell_type == "markdown"]
        assert "## Exercises" in headings, f"{path.name}: end with exercises"
        exercises = next(c.source for c in cells if c.source.startswith("## Exercises"))
        assert 2 <= len(re.findall(r"^\d\. \*\*", exercises, re.M)) <= 3


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_badges(path):
    title = _read(path).cells[0].source
    rel = path.relative_to(NOTEBOOK_DIR).as_posix()
    assert f"{COLAB}{rel})" in title, f"{path.name}: Open-in-Colab badge missing or wrong"
    assert f"{BINDER}{rel.replace('/', '%2F')})" in title, f"{path.name}: Binder badge"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_colab_install_cell_pins_the_release_and_fails_clearly(path):
    setup = _read(path).cells[2].source
    kits = re.findall(r'KIT = "([^"]+)"', setup)
    assert kits == [COLAB_KIT], f"{path.name}: the Colab install cell installs {kits}"
    assert "check=True" not in setup and "raise SystemExit(" in setup, (
        f"{path.name}: a failed install must stop with one clear line, not a traceback")


# Where a student meets the repository's address: badges, install cells, the README, the docs.
URL_FILES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")),
             *sorted((REPO / "binder").iterdir()), *NOTEBOOKS,
             *[p.with_suffix(".py") for p in NOTEBOOKS]]
URL_PATTERNS = [r"colab\.research\.google\.com/github/([\w.-]+/[\w.-]+)/",
                r"mybinder\.org/v2/gh/([\w.-]+/[\w.-]+)/",
                r"git\+https://github\.com/([\w.-]+/[\w.-]+?)(?:\.git)?[@\"'\s#]",
                r"github\.com/([\w.-]*hagan-kit[\w.-]*/[\w.-]+)"]


def test_every_badge_and_install_url_is_the_project_url():
    found = 0
    for path in URL_FILES:
        text = path.read_text(encoding="utf-8")
        for pattern in URL_PATTERNS:
            for slug in re.findall(pattern, text):
                found += 1
                assert slug == SLUG, (f"{path.relative_to(REPO)} names the repository {slug!r}; "
                                      f"pyproject.toml's [project.urls] says {REPO_URL}")
    assert found >= 3 * len(NOTEBOOKS), "the badges and install cells were not found"
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert f"{COLAB}00_setup_and_data_tour.ipynb" in readme and f"mybinder.org/v2/gh/{SLUG}/" \
        in readme, "README: the Colab and Binder links of section 'Open the notebooks'"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_short_cells_and_figures_from_viz(path):
    for cell in _read(path).cells:
        if cell.cell_type != "code":
            continue
        lines = [ln for ln in cell.source.splitlines() if ln.strip()]
        assert len(lines) <= MAX_CODE_LINES, \
            f"{path.name}: a {len(lines)}-line cell:\n{cell.source}"
        assert "matplotlib" not in cell.source and "plt." not in cell.source, (
            f"{path.name}: figures come from hagan.viz only")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_paired_script_in_sync(path):
    """Each .ipynb is generated from the jupytext .py next to it (reviewable in diffs)."""
    import jupytext

    script = path.with_suffix(".py")
    assert script.is_file(), f"{script} is missing"
    paired = jupytext.read(script)
    committed = _read(path)
    ours = [(c.cell_type, c.source, c.metadata.get("tags", [])) for c in paired.cells]
    theirs = [(c.cell_type, c.source, c.metadata.get("tags", [])) for c in committed.cells]
    assert ours == theirs, (f"{path.name} differs from {script.name}; regenerate it with "
                            f"`jupytext --to ipynb {script.relative_to(REPO)}`")


# --- fast: one dependency list everywhere --------------------------------------------------------
def _name(requirement: str) -> str:
    return re.split(r"[\s<>=!~;\[]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _spec(requirement: str) -> str:
    return requirement.strip()[len(_name(requirement)):].replace(" ", "")


def _pyproject_requirements() -> dict[str, str]:
    project = _pyproject()
    extras = project["optional-dependencies"]
    reqs = list(project["dependencies"]) + list(extras["dev"]) + list(extras["notebooks"])
    return {_name(r): _spec(r) for r in reqs}


# conda-forge names of packages whose pip name differs
CONDA_TO_PIP = {"pytorch": "torch"}


def test_binder_and_environment_list_the_pyproject_dependencies():
    import yaml

    expected = _pyproject_requirements()
    binder = [ln for ln in (REPO / "binder" / "requirements.txt").read_text(encoding="utf-8")
              .splitlines() if ln.strip() and not ln.startswith(("#", "-", "."))]
    assert {_name(r): _spec(r) for r in binder} == expected, "binder/requirements.txt"
    env = yaml.safe_load((REPO / "environment.yml").read_text(encoding="utf-8"))
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    listed = {CONDA_TO_PIP.get(_name(d), _name(d)): _spec(d) for d in conda
              if _name(d) not in ("python", "pip")}
    assert listed == expected, "environment.yml"
    postbuild = (REPO / "binder" / "postBuild").read_text(encoding="utf-8")
    assert "pip install" in postbuild and "demo-data" in postbuild


# --- the runner: quiet, final progress bars, one-line failures -----------------------------------
def test_runner_is_quiet_keeps_final_bars_and_summarises_a_failure(tmp_path, capfd):
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3",
                                                           "display_name": "Python 3",
                                                           "language": "python"}})
    nb.cells = [nbformat.v4.new_code_cell('work_dir = ""\nsmoke = False',
                                          metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell("from tqdm import tqdm\n"
                                          "for _ in tqdm(range(50), mininterval=0): pass"),
                nbformat.v4.new_code_cell("raise ValueError('boom: the lesson failed')")]
    path = tmp_path / "nb" / "00_failing.ipynb"
    path.parent.mkdir()
    nbformat.write(nb, path)
    with pytest.raises(NotebookError) as failure:  # every notebook attempted, then one summary
        run_all(tmp_path / "out", tmp_path / "work", smoke=True, notebook_dir=path.parent)
    summary = str(failure.value)
    assert re.search(r"00_failing.ipynb: ValueError in cell \[\d+\]: boom: the lesson failed",
                     summary) and "Traceback" not in summary, summary
    cell = next(c for c in _read(tmp_path / "out" / path.name).cells
                if c.source.startswith("from tqdm"))
    bar = "".join(o.get("text", "") for o in cell.outputs)
    assert "50/50" in bar and "\r" not in bar and " 0%" not in bar, repr(bar)
    printed = capfd.readouterr()
    assert re.search(r"\[ 1/1\] 00_failing +\d+\.\d s \(CPU [\d.]+ s\) FAILED", printed.out)
    for noise in ("WARNING", "ERROR", "without encryption", "Input Notebook",
                  "Executing notebook"):
        assert noise not in printed.out + printed.err, printed


# --- slow: run every notebook and solution in smoke mode, in order --------------------------------
@pytest.fixture(scope="module")
def work_dir():
    shutil.rmtree(BUILD, ignore_errors=True)
    WORK.mkdir(parents=True)
    return WORK


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_runs(path, work_dir):
    out = BUILD / path.relative_to(NOTEBOOK_DIR)
    result = run_notebook(path, out, work_dir, smoke=True, html=False)
    assert result["ok"], f"{path.name} failed (executed copy: {out}):\n{result['error']}"
    missing = [g for g in EXPECTED_OUTPUTS[path.stem] if not list(work_dir.glob(g))]
    assert not missing, f"{path.name} did not write {missing} in {work_dir}"
    for cell in _read(out).cells:
        if cell.cell_type != "code":
            continue
        text = "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")
        lines = text.count("\n")
        assert lines < MAX_OUTPUT_LINES, f"{path.name}: {lines} output lines in\n{cell.source}"
        assert not any(o.output_type == "error" for o in cell.outputs)
