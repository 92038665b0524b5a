"""The main job behind ``make demo``: demo cohort -> demo32 training -> samples -> figures.

    python -m hagan.demo_job --out outputs [--iterations N] [--no-notebooks]

Steps: build the offline demo cohort (nilearn's MNI152 template with TorchIO random transforms),
train the ``demo32`` preset (the CPU demo recipe for this cohort; GPU when present), write
generated volumes as NIfTI, save PNGs of real vs generated orthogonal slices, the loss curves and
the diversity checks, then (unless --no-notebooks) execute every notebook and write executed
copies and HTML into ``OUT/notebooks``. The cohort and the model are made where the notebooks
look for them (``OUT/notebook_work``), so notebooks 03-06 show this model, not another one.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from . import teaching
from .config import PRESETS, Config
from .errors import HaganError, explain

logger = logging.getLogger(__name__)

MIN_SUBJECTS = 3  # the real-vs-generated figure shows three real volumes
PRESET = "demo32"  # the CPU demo recipe for the demo cohort (hagan.config.PRESETS)


def run(out: Path, iterations: int, n_subjects: int, seed: int, notebooks: bool) -> int:
    """Run the demo job into ``out`` (see the module docstring); returns the exit code 0.

    Args:
        out: Output folder (created; an earlier demo's run in it is resumed, never overwritten).
        iterations: demo32 training iterations.
        n_subjects: Size of the demo cohort (at least 3: three real volumes are plotted).
        seed: Seed of the cohort, the training run and the samples.
        notebooks: Execute every notebook into ``out/notebooks`` at the end.
    """
    from . import demo, viz
    from .config import preset
    from .data import PreparedDataset, save_nifti
    from .generate import output_settings, sample, sample_name
    from .runtime import print_env
    from .train import train

    t0 = time.perf_counter()
    print_env()
    out.mkdir(parents=True, exist_ok=True)
    # the notebooks' work dir and their names for the cohort and the run: they reuse both
    nb_work = out / "notebook_work"
    cfg = preset(PRESET, iterations=iterations, seed=seed)
    data_dir = teaching.demo_path(nb_work, cfg.size)
    print(f"[1/4] demo cohort: {n_subjects} volumes at {cfg.size}^3 -> {data_dir}")
    demo.make_demo_dataset(data_dir, n=n_subjects, size=cfg.size, seed=seed, force=True)  # reuses

    run_dir = teaching.run_path(nb_work, PRESET)
    _refuse_other_recipe(run_dir, cfg)
    print(f"[2/4] training {PRESET} for {iterations} iterations -> {run_dir}")
    # diversity_every (in the preset): the collapse watch, MS-SSIM among 8 samples of fixed z
    result = train(cfg.replace(data=str(data_dir)), run_dir)  # an earlier run is resumed

    from .checkpoint import load_models, read_metrics

    # the checkpoint the run's validation kept (keep_best_from, in the preset), else the last
    kept = result.best_scores  # None unless validation kept a checkpoint
    model = result.best or result.checkpoint or run_dir
    model_step = int(kept["step"]) if kept is not None else result.step
    print(f"[3/4] sampling 8 volumes from {Path(model).name} (iteration {model_step})")
    cfg, nets = load_models(model)
    fake = sample(nets["G"], 8, batch_size=8, seed=seed)
    sample_dir = out / "samples"
    settings = output_settings(run_dir, cfg)  # voxel size of the demo cohort
    for i, vol in enumerate(fake):
        save_nifti(vol, sample_dir / sample_name(i), **settings)
    real_ds = PreparedDataset(data_dir, size=cfg.size)
    real = [real_ds[i] for i in range(MIN_SUBJECTS)]
    fig = viz.plot_real_vs_generated(real, list(fake[:3]),
                                     title=f"demo cohort vs {PRESET} samples, iteration "
                                           f"{model_step}")
    fig_path = viz.save(fig, out / "real_vs_generated.png")
    records = read_metrics(run_dir)
    loss_path = viz.save(viz.plot_losses(records, title=f"{PRESET} training losses"),
                         out / "losses.png")
    checks = [r for r in records if "ms_ssim_fake" in r]
    scored = [r for r in records if "val_score" in r]
    diversity_path = (viz.save(viz.plot_diversity(checks, title=f"{PRESET}: diversity during "
                                                  "training"), out / "diversity.png")
                      if checks else None)
    validation_path = (viz.save(viz.plot_validation(scored, title=f"{PRESET}: which checkpoint "
                                                    "to keep"), out / "validation.png")
                       if scored else None)

    nb_dir, nb_failed = None, ""
    if notebooks:
        from .notebook_runner import NotebookError, run_all

        print("[4/4] executing the notebooks")
        try:
            nb_dir = run_all(out / "notebooks", work_dir=nb_work, smoke=False,
                             extra={"seed": seed, "n_subjects": n_subjects,
                                    "iterations": iterations})
        except NotebookError as exc:  # every notebook was attempted; summarise, no traceback
            nb_dir, nb_failed = out / "notebooks", str(exc)
    else:
        print("[4/4] notebooks skipped")
    minutes = (time.perf_counter() - t0) / 60
    print(f"\ndone in {minutes:.1f} min. Results:")
    print(f"  demo data            {data_dir}")
    print(f"  last checkpoint      {result.checkpoint}")
    if kept is not None:
        print(f"  model (best.pt)      {result.best}: iteration {model_step}, the best of "
              f"{len(scored)} scored on held-out volumes (score {kept['val_score']:.2f}: "
              f"MS-SSIM {kept['val_ms_ssim']:.2f} vs {kept['val_ms_ssim_real']:.2f}, FID ratio "
              f"{kept['val_fid_ratio']:.1f}; within both tolerances when <= 1)")
    if validation_path is not None:
        print(f"  validation           {validation_path}")
    print(f"  training log         {run_dir / 'metrics.jsonl'} (TensorBoard: {run_dir / 'tb'})")
    print(f"  samples (NIfTI)      {sample_dir}")
    print(f"  real vs generated    {fig_path}")
    print(f"  loss curves          {loss_path}")
    if diversity_path is not None:
        # the check of the model sampled above when there is one, else the last
        last = next((r for r in checks if r["step"] == model_step), checks[-1])
        verdict = ("MODE COLLAPSE: samples far more alike than real volumes"
                   if last["ms_ssim_fake"] > last["ms_ssim_real"] + 0.1 else "no collapse")
        print(f"  diversity            {diversity_path} (iteration {last['step']}: MS-SSIM among "
              f"samples {last['ms_ssim_fake']:.2f}, real {last['ms_ssim_real']:.2f}: {verdict})")
    if nb_dir is not None:
        print(f"  executed notebooks   {nb_dir} (.ipynb and .html; timings.json)")
        print(f"  notebook work dir    {nb_work}")
        for sub in sorted(p for p in nb_work.glob("*") if p.is_dir()):
            n_files = sum(1 for f in sub.rglob("*") if f.is_file())
            print(f"    {sub.name + '/':<26} {n_files} files")
    if nb_failed:
        print(f"\nmake demo: error: {nb_failed}", file=sys.stderr)
        return 1
    return 0


def _refuse_other_recipe(run_dir: Path, cfg: Config) -> None:
    """An earlier demo's run is resumed only when it has this kit's recipe and the same seed:
    resuming a run of an older ``demo32`` (e.g. another R1 weight) would mix two recipes.

    Raises:
        RunError: the run's ``config.json`` differs in a value the preset sets, or in seed.
    """
    from .errors import RunError
    from .fileio import read_json

    saved = run_dir / "config.json"
    if not saved.is_file():
        return
    old, new = read_json(saved), cfg.to_dict()
    logging_only = ("iterations", "log_every", "image_every", "diversity_every")  # notebook 03
    keys = [k for k in (*PRESETS[PRESET], "seed") if k not in logging_only]
    changed = [k for k in keys if isinstance(old, dict) and old.get(k) != new[k]]
    if changed:
        k = changed[0]
        raise RunError(explain(str(run_dir), f"a {PRESET} run of this kit's recipe to resume",
                               f"a run with {k}={old.get(k)!r} (now {new[k]!r})",
                               "Use another --out folder, or move that one aside; nothing was "
                               "changed."))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m hagan.demo_job", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="outputs", help="output folder (default outputs/)")
    default_iterations = PRESETS[PRESET]["iterations"]
    p.add_argument("--iterations", type=int, default=default_iterations,
                   help=f"{PRESET} iterations (default {default_iterations})")
    default_n = teaching.SCALE_DEFAULTS["cpu"]["n_subjects"]  # the cpu-scale notebooks' cohort
    p.add_argument("--n", type=int, default=default_n,
                   help=f"demo cohort size (default {default_n})")
    p.add_argument("--seed", type=int, default=0, help="seed of cohort, run and samples")
    p.add_argument("--no-notebooks", action="store_true", help="skip executing the notebooks")
    return p


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    if args.n < MIN_SUBJECTS:
        p.error(explain("--n", f"at least {MIN_SUBJECTS} volumes (three real volumes are "
                        "plotted)", str(args.n)))
    if args.iterations < 1:
        p.error(explain("--iterations", "at least 1", str(args.iterations)))
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        return run(Path(args.out), args.iterations, args.n, args.seed, not args.no_notebooks)
    except HaganError as exc:
        print(f"make demo: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # disk full, read-only folder: name the path and cause
        where = f" {exc.filename}" if exc.filename else ""
        print(f"make demo: error:{where}: {exc.strerror or exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
