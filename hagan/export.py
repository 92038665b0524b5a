"""``hagan export RUN --out FILE``: a run's newest checkpoint as one shareable safetensors file
(G, D, E, SubE weights, the config and the training data's geometry; see :mod:`hagan.weights`),
with its SHA-256 printed.

Example::

    hagan export runs/brain128 --out brain128.safetensors
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .checkpoint import load_checkpoint, networks_from_states, resolve, run_data_geometry
from .config import from_dict
from .errors import RunError, explain
from .weights import SUFFIX, note_suffix, write_weights


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="run folder (its newest good checkpoint) or a checkpoint file")
    p.add_argument("--out", required=True, metavar="FILE",
                   help=f"weights file to write, e.g. brain128{SUFFIX}")
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")


def main(args: argparse.Namespace) -> int:
    """Export a run's newest checkpoint (G, D, E, SubE and config) as safetensors."""
    out = Path(args.out)
    if out.exists() and not args.force:
        raise RunError(explain("--out", "a new file", f"{out} (already exists)",
                               "Choose another --out or pass --force to overwrite it."))
    source = resolve(args.run)
    state = load_checkpoint(source)
    cfg = from_dict(state["config"])
    nets = networks_from_states(cfg, state["models"], source)  # checks that they fit
    geometry = run_data_geometry(state)
    digest = write_weights(out, cfg, nets, step=int(state.get("step", 0)),
                           source=f"hagan-kit run checkpoint {source.name}",
                           data=geometry if geometry.get("spacing_mm") else None)
    print(f"wrote {out} ({', '.join(nets)}; {cfg.size}^3, iteration {state.get('step', 0)})")
    print(f"sha256 {digest}")
    note_suffix(out)
    return 0
