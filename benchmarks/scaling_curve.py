"""Scaling curve: one generator update, naive full-resolution vs hierarchical, at sizes 32..256.

    python benchmarks/scaling_curve.py --width 0.25 --sizes 32 64 128 256 --out benchmarks/

Measures, for each cube size S, the activation memory autograd keeps for backward and the
seconds of one G update (forward through G and D, backward) for the naive GAN (G makes the whole
S^3 volume, D judges all of it) and the hierarchical HA-GAN step (the (S/4)^3 image and one S/8
slab). A naive step predicted to need more than half the free memory is skipped and marked.
Writes ``scaling_curve.png`` and ``scaling_curve.json`` (same code as notebook 02).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import torch

from hagan import scaling, viz


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 128, 256])
    p.add_argument("--width", type=float, default=0.25, help="network width (1.0: the paper's)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--out", default="benchmarks", help="folder for the PNG and JSON")
    args = p.parse_args()
    records = scaling.compare_steps(args.sizes, width=args.width, device=args.device,
                                    repeats=args.repeats)
    where = (torch.cuda.get_device_name() if args.device.startswith("cuda")
             else f"{platform.processor() or platform.machine()}, "
                  f"{torch.get_num_threads()} threads")
    fig = viz.plot_step_costs(records, title=f"one G update, width {args.width:g}: naive vs "
                                             f"hierarchical ({where})")
    out = Path(args.out)
    viz.save(fig, out / "scaling_curve.png")
    (out / "scaling_curve.json").write_text(json.dumps(
        {"device": where, "torch": torch.__version__, "width": args.width, "records": records},
        indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
