"""``hagan export RUN --out FILE``: a run's model as one shareable safetensors file
(G, D, E, SubE weights, the config and the training data's geometry; see :mod:`hagan.weights`),
with its SHA-256 printed.

The input may also be a weights file (safetensors, from ``hagan export`` or ``hagan
import-official``): it is read, checked (the weights must fit the config it stores) and written
again as a new file with the same networks, config, iteration and data geometry (a checked copy,
e.g. after a download). ``--out`` must be a file name outside any prepared dataset and must not
be the input itself.

Example::

    hagan export runs/brain128 --out brain128.safetensors
"""

from __future__ import annotations

import argparse

from .checkpoint import load_checkpoint, networks_from_states, resolve, run_data_geometry
from .config import from_dict
from .errors import RunError, explain
from .fileio import check_output_file, check_output_outside_dataset
from .weights import (
    SUFFIX,
    looks_like_safetensors,
    note_suffix,
    read_data_geometry,
    read_weights,
    write_weights,
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="run folder (its best.pt, else its newest good checkpoint), a "
                   "checkpoint file or a weights file (written again as a checked copy)")
    p.add_argument("--out", required=True, metavar="FILE",
                   help=f"weights file to write, e.g. brain128{SUFFIX}")
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")


def main(args: argparse.Namespace) -> int:
    """Export a run's model (G, D, E, SubE and config) as safetensors: the checkpoint its
    validation kept (``checkpoints/best.pt``) when there is one, else its newest."""
    out = check_output_file(args.out, "--out")
    source = resolve(args.run)
    check_output_outside_dataset(out, "--out", inputs=(args.run, source))
    if out.exists() and not args.force:
        raise RunError(explain("--out", "a new file", f"{out} (already exists)",
                               "Choose another --out or pass --force to overwrite it."))
    if looks_like_safetensors(source):  # a weights file: a checked copy
        cfg, states, step = read_weights(source)
        geometry = read_data_geometry(source) or {}
        origin = f"hagan-kit weights file {source.name}"
    else:
        state = load_checkpoint(source)
        cfg, states = from_dict(state["config"]), state["models"]
        step = int(state.get("step", 0))
        geometry = run_data_geometry(state)
        origin = f"hagan-kit run checkpoint {source.name}"
    nets = networks_from_states(cfg, states, source)  # checks that they fit
    digest = write_weights(out, cfg, nets, step=step, source=origin,
                           data=geometry if geometry.get("spacing_mm") else None)
    print(f"wrote {out} ({', '.join(nets)}; {cfg.size}^3, iteration {step})")
    print(f"sha256 {digest}")
    note_suffix(out)
    return 0
