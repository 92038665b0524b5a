"""Execute the teaching notebooks headlessly with papermill, in order, sharing one work dir.

    python -m hagan.notebook_runner --out build/notebooks --work build/notebooks/work --smoke

Every notebook in ``notebooks/`` (``00_...`` to ``07_...``) runs first, then every solution in
``notebooks/solutions/``. Each gets the papermill parameters ``work_dir``, ``smoke``, ``scale``
(``smoke``, or ``cpu`` for the CPU-sized run of ``make demo``) and ``interactive=False`` (static
figures instead of widgets), as far as its ``parameters`` cell declares them. The executed copy
and an HTML rendering of each are written to the output folder, with one progress line per
notebook and a ``timings.json``.
"""

from __future__ import annotations

import argparse
import logging
import resource
import sys
import time
from pathlib import Path
from typing import Any

from .config import PathLike
from .errors import HaganError, RunError, explain
from .fileio import write_json

logger = logging.getLogger(__name__)

REPO_NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"  # editable install / checkout
SOLUTIONS = "solutions"
KERNEL_NAME = "python3"  # the kernel `make setup` installs into the venv
CELL_TIMEOUT_S = 1800  # one cell may run this long (training at CPU scale is the longest)
# The kernel's own log stays quiet: no "running over TCP without encryption" warning and no
# "KeyboardInterrupt caught in kernel" when papermill shuts it down. A cell's error is still in
# the executed notebook and in the one-line summary; a dead kernel still fails the notebook.
KERNEL_ARGS = ["--IPKernelApp.log_level=CRITICAL"]


class NotebookError(RunError):
    """A notebook failed; the message names it and where its executed copy is."""


def notebook_paths(notebook_dir: PathLike | None = None) -> list[Path]:
    """The notebooks in execution order: ``NN_*.ipynb``, then ``solutions/NN_*.ipynb``.

    Raises:
        RunError: the folder holds no notebooks (e.g. a non-editable install).
    """
    folder = Path(notebook_dir) if notebook_dir else REPO_NOTEBOOKS
    paths = sorted(folder.glob("[0-9][0-9]_*.ipynb"))
    paths += sorted((folder / SOLUTIONS).glob("[0-9][0-9]_*.ipynb"))
    if not paths:
        raise RunError(explain("notebook folder", "NN_*.ipynb notebooks", f"none in {folder}",
                               "Run from a checkout of hagan-kit (pip install -e .) or pass "
                               "--notebooks DIR."))
    return paths


def parameters_for(path: Path, work_dir: PathLike, smoke: bool,
                   extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The run parameters that the notebook's ``parameters`` cell declares.

    ``extra``: more parameters (e.g. ``seed``, ``n_subjects``), each passed only to the notebooks
    that declare it.
    """
    import papermill as pm

    wanted = {"work_dir": str(Path(work_dir).resolve()), "smoke": smoke,
              "scale": "smoke" if smoke else "cpu", "interactive": False, **(extra or {})}
    declared = pm.inspect_notebook(str(path))
    required = ("work_dir", "smoke")  # every notebook has them (tests/test_notebooks.py checks)
    return {k: v for k, v in wanted.items() if k in declared or k in required}


def to_html(ipynb: Path) -> Path:
    """Render an executed notebook to a self-contained HTML file next to it."""
    import nbformat
    from nbconvert import HTMLExporter

    quiet = logging.getLogger(f"{__name__}.nbconvert")  # not "alt text is missing" per figure
    quiet.setLevel(logging.ERROR)
    body, _ = HTMLExporter(log=quiet).from_notebook_node(nbformat.read(ipynb, as_version=4))
    html = ipynb.with_suffix(".html")
    html.write_text(body, encoding="utf-8")
    return html


def error_summary(exc: BaseException) -> str:
    """One line for a failed notebook: the exception raised in the cell and the cell's number.

    papermill's ``PapermillExecutionError`` carries the cell's ``ename``/``evalue``/``exec_count``;
    other errors (a kernel that died, a timeout) are named by their type and first line.
    """
    ename, evalue = getattr(exc, "ename", None), getattr(exc, "evalue", None)
    if ename:
        cell = getattr(exc, "exec_count", None)
        where = f" in cell [{cell}]" if cell is not None else ""
        first = str(evalue).strip().splitlines()[0] if str(evalue).strip() else ""
        return f"{ename}{where}: {first}"
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"


def run_notebook(path: Path, out_path: Path, work_dir: PathLike, smoke: bool,
                 html: bool = True, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Execute one notebook with papermill into ``out_path`` (and its HTML next to it).

    Returns:
        ``name``, ``seconds`` (wall), ``cpu_seconds`` (user + system time of the kernel process),
        ``ok`` and ``error`` (one line: the exception a cell raised, see :func:`error_summary`).
    """
    import papermill as pm

    work = Path(work_dir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    error = ""
    logging.getLogger("papermill").setLevel(logging.WARNING)  # no "Input Notebook: ..." banners
    try:
        # coalesce_streams: each cell's stdout/stderr is one block with carriage returns applied,
        # so that a text progress bar is saved in its final state (100 %), not as every redraw.
        pm.execute_notebook(str(path), str(out_path), parameters=parameters_for(path, work, smoke,
                                                                              extra),
                            kernel_name=KERNEL_NAME, cwd=str(work), progress_bar=False,
                            log_output=False, execution_timeout=CELL_TIMEOUT_S,
                            extra_arguments=KERNEL_ARGS, coalesce_streams=True)
    except Exception as exc:  # papermill raises its own and nbclient's errors
        error = error_summary(exc)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if html and out_path.is_file():
        to_html(out_path)
    return {"name": path.stem, "seconds": round(seconds, 1), "cpu_seconds": round(cpu, 1),
            "ok": not error, "error": error}


def run_all(out_dir: PathLike, work_dir: PathLike, smoke: bool,
            notebook_dir: PathLike | None = None, extra: dict[str, Any] | None = None) -> Path:
    """Execute every notebook, then every solution, in order, sharing ``work_dir``.

    Args:
        out_dir: Where the executed ``.ipynb`` and ``.html`` copies go (solutions in
            ``out_dir/solutions``), plus ``timings.json``.
        work_dir: The work dir all notebooks share (data, checkpoints, samples, figures).
        smoke: CI settings (seconds per notebook) instead of the CPU-sized ``make demo`` ones.
        notebook_dir: Folder of the notebooks (default: ``notebooks/`` of this checkout).
        extra: More papermill parameters, each given to the notebooks that declare it
            (``make demo`` passes its ``seed``, ``n_subjects`` and ``iterations``, so that the
            notebooks find the demo's cohort and model instead of making others).

    Returns:
        ``out_dir``.

    Raises:
        NotebookError: one or more notebooks failed (all are attempted; the message lists them
            with the path of each executed copy, which shows the failing cell).
    """
    out = Path(out_dir)
    paths = notebook_paths(notebook_dir)
    results, failed = [], []
    mode = "smoke" if smoke else "cpu"
    print(f"running {len(paths)} notebooks ({mode} settings), work dir {work_dir}")
    for i, path in enumerate(paths, 1):
        target = out / (SOLUTIONS if path.parent.name == SOLUTIONS else "") / path.name
        # the name first, so a long notebook (training) shows what is running; the time after
        print(f"[{i:>2}/{len(paths)}] {path.stem:<48}", end=" ", flush=True)
        res = run_notebook(path, target, work_dir, smoke, extra=extra)
        results.append(res)
        status = "ok" if res["ok"] else "FAILED"
        print(f"{res['seconds']:7.1f} s (CPU {res['cpu_seconds']:.1f} s) {status}", flush=True)
        if not res["ok"]:
            print(f"        {res['error']}", flush=True)
            failed.append(f"{path.name}: {res['error']} (the executed copy {target} shows the "
                          "cell)")
    total = sum(r["seconds"] for r in results)
    print(f"all notebooks: {total:.1f} s ({total / 60:.1f} min); executed copies and HTML in {out}")
    write_json(out / "timings.json", {"mode": mode, "notebooks": results})
    if failed:
        raise NotebookError(f"{len(failed)} notebook(s) failed:\n" + "\n".join(failed))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m hagan.notebook_runner", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="build/notebooks", help="folder for executed copies + HTML")
    p.add_argument("--work", default=None, help="shared work dir (default OUT/work)")
    p.add_argument("--smoke", action="store_true", help="CI settings: seconds per notebook")
    p.add_argument("--notebooks", default=None, help="notebook folder (default: notebooks/)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
        run_all(args.out, args.work or Path(args.out) / "work", args.smoke, args.notebooks)
    except HaganError as exc:
        print(f"notebook_runner: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
