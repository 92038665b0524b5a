"""One full-volume generation (batch 1, fp32, no grad): the kit against the published code.

    python benchmarks/generate_compare.py --size 256 --official /path/to/HA-GAN

``--official`` is a clone of https://github.com/batmanlab/HA-GAN (only its ``models/`` folder is
imported, from that path, never copied). Each case runs in its own process so that its peak RSS
is its own:

* ``kit``          ``Generator.generate(z, chunk=16)``: fused upsample + conv, G^H slab-wise
* ``kit-onepass``  ``Generator.generate(z)``: fused upsample + conv, G^H in one pass
* ``official``     the published ``Generator(mode="eval")(z)``
* ``check``        published random weights -> ``hagan.official.load_official`` -> the kit:
                   max |published - kit| for one pass and chunked (fp32)

Prints one JSON line per case.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _published_generator(official: str, size: int):
    sys.path.insert(0, official)
    module = __import__(f"models.Model_HA_GAN_{size}", fromlist=["Generator"])
    return module.Generator(mode="eval", latent_dim=1024, num_class=0)


def run_case(case: str, size: int, official: str | None, iters: int) -> dict:
    import torch

    from hagan.bench import peak_rss_gib
    from hagan.config import preset
    from hagan.models import Generator

    torch.manual_seed(0)
    z = torch.randn(1, 1024)
    if case == "check":
        pub = _published_generator(official, size).eval()
        from hagan.official import load_official

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "G_iter0.pth"
            torch.save({"model": pub.state_dict()}, path)
            kit = load_official(size, path).generator.eval()
        with torch.inference_mode():
            ref = pub(z)
            onepass, chunked = kit.generate(z), kit.generate(z, chunk=16)
        return {"case": case, "size": size,
                "max_abs_diff_onepass": float((ref - onepass).abs().max()),
                "max_abs_diff_chunked": float((ref - chunked).abs().max()),
                "max_abs_diff_chunked_vs_onepass": float((chunked - onepass).abs().max())}
    if case == "official":
        G = _published_generator(official, size).eval()
        run = lambda: G(z)  # noqa: E731
    else:
        G = Generator(preset(f"paper{size}")).eval()
        chunk = 16 if case == "kit" else None
        run = lambda: G.generate(z, chunk=chunk)  # noqa: E731
    times = []
    with torch.inference_mode():
        for i in range(iters + 1):  # the first is a warm-up
            t = time.perf_counter()
            run()
            if i:
                times.append(time.perf_counter() - t)
    return {"case": case, "size": size, "s_per_volume": round(sorted(times)[len(times) // 2], 3),
            "times": [round(t, 3) for t in times], "peak_rss_gib": round(peak_rss_gib(), 3),
            "threads": torch.get_num_threads(), "torch": torch.__version__}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=256, choices=(128, 256))
    p.add_argument("--official", help="a clone of batmanlab/HA-GAN (for 'official' and 'check')")
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--case", help="run one case in this process (used by the driver)")
    args = p.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case, args.size, args.official, args.iters)))
        return 0
    cases = ["kit", "kit-onepass"] + (["official", "check"] if args.official else [])
    for case in cases:
        cmd = [sys.executable, __file__, "--case", case, "--size", str(args.size),
               "--iters", str(args.iters)] + (["--official", args.official] if args.official
                                               else [])
        out = subprocess.run(cmd, capture_output=True, text=True, encoding="utf-8",
                             errors="replace")
        if out.returncode:
            print(json.dumps({"case": case, "error": out.stderr.strip().splitlines()[-1:]}))
        else:
            print(out.stdout.strip().splitlines()[-1], flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
