"""Time one HA-GAN training iteration (D, G, E, Sub-E updates) and print one JSON line.

    python benchmarks/train_step.py --preset paper128 --batch-size 2 --device cpu --iters 3
    python benchmarks/train_step.py --preset paper256 --batch-size 4 --device cuda --precision bf16

Fields: s_per_iter (median), peak_rss_gib (peak_cuda_gib on GPU), flops_per_iter
(torch.utils.flop_counter), tflops. Same code as `hagan bench`.
"""

import argparse
import sys

from hagan import bench

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    bench.add_arguments(parser)
    parser.set_defaults(json=True)  # this script prints JSON, `hagan bench` a table
    sys.exit(bench.main(parser.parse_args()))
