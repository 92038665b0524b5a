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
