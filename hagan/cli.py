"""The ``hagan`` command: a thin layer over the package.

Subcommands: demo-data, preprocess, train, generate, evaluate, import-official, export, bench.
Each subcommand lives in the module that does the work, which provides two functions:
``add_arguments(parser)`` and ``main(args) -> int``. Errors a user can cause (missing data, a
wrong size, an unknown preset or key, a bad checkpoint) print one line and exit non-zero.

One flag style for every subcommand: where a subcommand has these settings, the output is
``--out``, a count is ``--n``, a batch size ``--batch-size``, a device ``--device`` (default
``auto``), a precision ``--precision`` (one of ``hagan.config.PRECISIONS``); ``train`` takes its
settings as config fields (``--set KEY=VALUE``); every option has help text; ``-v`` goes before or
after the subcommand. ``tests/test_cli.py`` checks this.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import NoReturn

from .errors import HaganError

# subcommand -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo-data": ("hagan.demo", "build the offline demo cohort (MNI152 template + TorchIO)"),
    "preprocess": ("hagan.preprocess", "turn CT/MRI files into a prepared dataset"),
    "train": ("hagan.train", "train HA-GAN (resumes when the run folder holds a checkpoint)"),
    "generate": ("hagan.generate", "sample full-resolution volumes and write NIfTI files"),
    "evaluate": ("hagan.metrics", "FID, MMD, MS-SSIM and memorisation report for a checkpoint"),
    "import-official": ("hagan.official",
                        "convert published HA-GAN .pth files to a kit weights file "
                        "(safetensors)"),
    "export": ("hagan.export", "write a run's networks and config as one safetensors file"),
    "bench": ("hagan.bench", "time and measure one training iteration or generation"),
}


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (exit code 2), like every other error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _version() -> str:
    """The installed hagan-kit version (package metadata), or the source tree's."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("hagan-kit")
    except PackageNotFoundError:  # run from a source tree that was never installed
        from . import __version__

        return __version__


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The ``hagan`` parser. Only ``command``'s module is imported (imports of torchio, nilearn
    or scikit-learn take seconds), so ``hagan train`` does not pay for ``hagan evaluate``."""
    parser = _Parser(
        prog="hagan",
        description="HA-GAN for 3D medical images: data, training, generation, evaluation.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        if name != command:
            continue
        try:
            mod = importlib.import_module(module)
        except ImportError as exc:  # an optional dependency missing must not break the others
            p.set_defaults(_import_error=str(exc))
            continue
        mod.add_arguments(p)
        # -v also after the subcommand (`hagan generate ... -v`); SUPPRESS keeps a -v given
        # before the subcommand when it is not repeated after it
        p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                       help="debug logging (also accepted before the subcommand)")
        p.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in argv if a in COMMANDS), None)
    parser = build_parser(command)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(message)s")
    logging.getLogger("filelock").setLevel(logging.WARNING)  # its acquire/release chatter
    if not args.command:
        parser.print_help()
        return 2
    if not hasattr(args, "_module"):
        print(f"hagan {args.command}: error: this command cannot be loaded: "
              f"{getattr(args, '_import_error', 'unknown reason')}", file=sys.stderr)
        return 2
    mod = importlib.import_module(args._module)
    try:
        return int(mod.main(args) or 0)
    except HaganError as exc:
        print(f"hagan {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # disk full, read-only folder, missing file: name the path and cause
        where = f" {exc.filename}" if exc.filename else ""
        print(f"hagan {args.command}: error:{where}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"hagan {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
