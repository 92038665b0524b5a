"""The main job behind ``make demo``: demo cohort -> tiny32 training -> samples -> figures.

    python -m hagan.demo_job --out outputs [--iterations N] [--no-notebooks]

Steps: build the offline demo cohort (nilearn's MNI152 template with TorchIO random transforms),
train the ``tiny32`` preset (GPU when present), write generated volumes as NIfTI, save a PNG of
real vs generated orthogonal slices and the loss curves, then (when the notebooks exist) execute
every notebook and write executed copies and HTML into ``OUT/notebooks``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

logger = logging.getLogger(__name__)


def run(out: Path, iterations: int, n_subjects: int, seed: int, notebooks: bool) -> int:
    import torch

    from . import demo, viz
    from .config import preset
    from .data import PreparedDataset
    from .generate import sample, save_nifti
    from .runtime import print_env
    from .train import train

    t0 = time.perf_counter()
    print_env()
    out.mkdir(parents=True, exist_ok=True)
    data_dir = out / "demo_data"
    print(f"[1/4] demo cohort: {n_subjects} volumes at 32^3 -> {data_dir}")
    demo.make_demo_dataset(data_dir, n=n_subjects, size=32, seed=seed, force=True)

    run_dir = out / "run_tiny32"
    print(f"[2/4] training tiny32 for {iterations} iterations -> {run_dir}")
    cfg = preset("tiny32", iterations=iterations, data=str(data_dir), seed=seed)
    result = train(cfg, run_dir)  # an earlier demo's run is resumed, never overwritten

    print("[3/4] sampling 8 volumes")
    from .checkpoint import load_models

    _, nets = load_models(result.checkpoint)
    fake = sample(nets["G"], 8, batch_size=8, seed=seed)
    sample_dir = out / "samples"
    for i, vol in enumerate(fake):
        save_nifti(vol, sample_dir / f"sample_{i:02d}.nii.gz")
    real_ds = PreparedDataset(data_dir, size=32)
    real = [real_ds[i] for i in range(3)]
    fig = viz.plot_real_vs_generated(real, list(fake[:3]),
                                     title=f"demo cohort vs tiny32 samples after {result.step} "
                                           "iterations")
    fig_path = viz.save(fig, out / "real_vs_generated.png")
    loss_path = viz.save(viz.plot_losses(run_dir, title="tiny32 training losses"),
                         out / "losses.png")

    nb_dir = None
    if notebooks:
        from .notebook_runner import run_all  # the notebooks issue adds this module

        print("[4/4] executing the notebooks")
        nb_dir = run_all(out / "notebooks", work_dir=out / "notebook_work", smoke=False)
    else:
        print("[4/4] notebooks skipped")
    minutes = (time.perf_counter() - t0) / 60
    print(f"\ndone in {minutes:.1f} min. Results:")
    print(f"  demo data            {data_dir}")
    print(f"  checkpoint           {result.checkpoint}")
    print(f"  training log         {run_dir / 'metrics.jsonl'} (TensorBoard: {run_dir / 'tb'})")
    print(f"  samples (NIfTI)      {sample_dir}")
    print(f"  real vs generated    {fig_path}")
    print(f"  loss curves          {loss_path}")
    if nb_dir is not None:
        print(f"  executed notebooks   {nb_dir}")
    del torch
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m hagan.demo_job", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="outputs", help="output folder (default outputs/)")
    p.add_argument("--iterations", type=int, default=600, help="tiny32 iterations (default 600)")
    p.add_argument("--subjects", type=int, default=64, help="demo cohort size (default 64)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-notebooks", action="store_true", help="skip executing the notebooks")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        from importlib.util import find_spec

        notebooks = not args.no_notebooks and find_spec("hagan.notebook_runner") is not None
        return run(Path(args.out), args.iterations, args.subjects, args.seed, notebooks)
    except (ValueError, FileNotFoundError) as exc:
        print(f"make demo: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
