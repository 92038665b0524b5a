"""The ``hagan`` command: one error voice, one flag style, --version, train --help."""

from __future__ import annotations

import argparse
from importlib.metadata import version

import pytest

from hagan import bench, cli
from hagan.config import Config
from hagan.errors import ConfigError


def _subparser(command: str) -> argparse.ArgumentParser:
    return cli.build_parser(command)._subparsers._group_actions[0].choices[command]


def _flags(command: str) -> dict[str, argparse.Action]:
    return {s: a for a in _subparser(command)._actions for s in a.option_strings}


def test_version_comes_from_the_package_metadata(capsys):
    with pytest.raises(SystemExit) as done:
        cli.main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"hagan {version('hagan-kit')}"


def test_train_help_lists_every_config_field_with_type_and_default():
    text = _subparser("train").format_help()
    for name, value in Config().to_dict().items():
        assert f"  {name} (" in text and f"default {value!r})" in text, name
    assert "Adam learning rates" in text and "--set KEY=VALUE" in text


@pytest.mark.parametrize("command", list(cli.COMMANDS))
def test_one_flag_style(command):
    """Output is always --out, counts are --n, batch sizes --batch-size, devices default auto;
    no positional output folder."""
    flags = _flags(command)
    positionals = [a.dest for a in _subparser(command)._actions if not a.option_strings]
    assert "out" not in positionals
    assert "--batch" not in flags and "--subjects" not in flags
    if command != "evaluate" and command != "bench":  # evaluate: optional report; bench: none
        assert "--out" in flags and flags["--out"].required, command
    if "--device" in flags:
        assert flags["--device"].default == "auto", command
    assert all(a.help for a in _subparser(command)._actions), command


def test_user_errors_are_one_line_and_programming_errors_keep_their_traceback(monkeypatch,
                                                                              capsys):
    def fail(exc):
        def main(args):
            raise exc
        return main

    monkeypatch.setattr(bench, "main", fail(ConfigError("--n: expected 2, found 1.")))
    assert cli.main(["bench"]) == 2
    assert capsys.readouterr().err == "hagan bench: error: --n: expected 2, found 1.\n"
    monkeypatch.setattr(bench, "main", fail(PermissionError(13, "Permission denied", "/x/y")))
    assert cli.main(["bench"]) == 1
    assert capsys.readouterr().err == "hagan bench: error: /x/y: Permission denied\n"
    # a KeyError or ValueError from the kit's own code is a bug: not dressed up as a user error
    for bug in (KeyError("G"), ValueError("shape mismatch")):
        monkeypatch.setattr(bench, "main", fail(bug))
        with pytest.raises(type(bug)):
            cli.main(["bench"])


def test_verbose_is_accepted_after_the_subcommand_too(monkeypatch):
    import logging

    for argv, expected in ((["generate", "run", "--out", "o", "-v"], True),
                           (["-v", "generate", "run", "--out", "o"], True),
                           (["generate", "run", "--out", "o"], False)):
        assert cli.build_parser("generate").parse_args(argv).verbose is expected, argv
    monkeypatch.setattr(bench, "main", lambda args: 0)
    logging.getLogger("filelock").setLevel(logging.NOTSET)
    assert cli.main(["bench", "--verbose"]) == 0
    assert logging.getLogger("filelock").getEffectiveLevel() == logging.WARNING


def test_set_takes_several_pairs_and_can_be_repeated():
    args = cli.build_parser("train").parse_args(
        ["train", "--out", "r", "--set", "iterations=4", "batch_size=2", "--set", "lr_g=1e-4"])
    assert args.overrides == ["iterations=4", "batch_size=2", "lr_g=1e-4"]


def test_every_readme_command_example_parses():
    """The README's `hagan ...` lines in its bash blocks are accepted by the parser."""
    import re
    import shlex
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    lines = [line.split("#")[0].strip()
             for block in re.findall(r"```bash\n(.*?)```", readme, flags=re.S)
             for line in block.splitlines()]
    examples = [shlex.split(line)[1:] for line in lines if line.startswith("hagan ")]
    assert len(examples) >= 8
    for argv in examples:
        if argv == ["--version"]:
            continue
        command = next(a for a in argv if a in cli.COMMANDS)
        cli.build_parser(command).parse_args(argv)  # SystemExit(2) on an unknown flag
