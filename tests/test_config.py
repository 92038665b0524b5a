"""Config: presets, the size rule, validation in the kit's one error voice, --set parsing."""

import pytest

from hagan import runtime
from hagan.config import (
    PRECISIONS,
    Config,
    check_device,
    describe_fields,
    field_help,
    parse_overrides,
    preset,
)
from hagan.errors import ConfigError


def test_presets_and_derived_sizes():
    cfg = preset("paper256")
    assert (cfg.size, cfg.feature_size, cfg.slab_depth, cfg.feature_slab_depth) == (256, 64, 32, 8)
    assert cfg.max_slab_start == 224 and cfg.num_upsamplings == 4
    cfg = preset("paper128")
    assert (cfg.feature_size, cfg.slab_depth, cfg.max_slab_start, cfg.num_upsamplings) == \
        (32, 16, 112, 3)
    assert preset("tiny32").size == 32 and preset("small64").size == 64
    # the paper's optimiser settings are the defaults
    assert (cfg.lr_g, cfg.lr_d, cfg.lr_e, cfg.beta1, cfg.beta2) == (1e-4, 4e-4, 1e-4, 0.0, 0.999)


@pytest.mark.parametrize("size", [16, 48, 100, 512])
def test_invalid_sizes_name_the_allowed_ones(size):
    with pytest.raises(ConfigError, match=f"size: expected one of 32, 64, 128, 256 .*, found "
                                          f"{size}. Resize your data with `hagan preprocess"):
        Config(size=size)


@pytest.mark.parametrize("kwargs, message", [
    (dict(batch_size=0), r"batch_size: expected a value > 0, found 0. Use e.g. "
                         r"--set batch_size=4 \(the default\)."),
    (dict(lr_d=-1.0), "lr_d: expected a value > 0, found -1.0"),
    (dict(beta1=1.0), r"beta1: expected a value in \[0, 1\), found 1.0"),
    (dict(workers=-1), "workers: expected a value >= 0, found -1"),
    (dict(precision="fp8"), "precision: expected one of fp32, bf16, fp16, found 'fp8'"),
    (dict(device="tpu"), "device: expected auto, cpu, cuda or cuda:N, found 'tpu'"),
    (dict(num_classes=1), r"num_classes: expected 0 \(unconditional\) or at least 2, found 1"),
    (dict(width=0.0), "width: expected a value > 0, found 0.0"),
])
def test_validation_messages_say_expected_found_and_fix(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        Config(**kwargs)


def test_unknown_preset_suggests_the_closest():
    with pytest.raises(ConfigError, match="preset: expected one of paper256, paper128, small64, "
                                          "tiny32, demo32, found 'paper512'. Did you mean "
                                          "'paper"):
        preset("paper512")


@pytest.mark.parametrize("name, ok", [
    ("auto", True), ("cpu", True), ("cuda", True), ("cuda:0", True), ("cuda:1", True),
    ("cuda:12", True), ("tpu", False), ("cuda:", False), ("cuda:x", False), ("CPU", False),
    ("cuda:1 ", False), ("mps", False),
])
def test_config_and_resolve_device_accept_the_same_names(name, ok):
    """Config and runtime.resolve_device share one rule (``cuda:N`` included): a name one of
    them refuses as unknown, the other refuses too."""
    if ok:
        assert Config(device=name).device == name and check_device(name) == name
    else:
        with pytest.raises(ConfigError, match="device: expected auto, cpu, cuda or cuda:N"):
            Config(device=name)
        with pytest.raises(ConfigError, match="device: expected auto, cpu, cuda or cuda:N"):
            runtime.resolve_device(name)


def test_resolve_device_refuses_a_gpu_that_is_not_there(monkeypatch):
    monkeypatch.setattr(runtime.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(runtime.torch.cuda, "device_count", lambda: 2)
    assert runtime.resolve_device("cuda:1").index == 1
    with pytest.raises(ConfigError, match=r"device: expected a visible CUDA GPU for 'cuda:2', "
                                          r"found 2 GPU\(s\)"):
        runtime.resolve_device("cuda:2")
    monkeypatch.setattr(runtime.torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="found 0 GPU"):
        runtime.resolve_device("cuda")
    assert runtime.resolve_device("auto").type == "cpu"


def test_one_precision_list():
    """Config, the autocast table and every --precision option use config.PRECISIONS."""
    from hagan.cli import build_parser

    assert tuple(runtime.DTYPES) == PRECISIONS
    for command in ("generate", "bench"):
        sub = build_parser(command)._subparsers._group_actions[0].choices[command]
        (action,) = [a for a in sub._actions if a.dest == "precision"]
        assert tuple(action.choices) == PRECISIONS, command
    with pytest.raises(ConfigError, match="precision: expected one of"):
        runtime.autocast_context("cpu", "fp64")


def test_overrides_are_typed():
    cfg = parse_overrides(["iterations=50", "lr_g=1e-3", "precision=bf16", "augment=true",
                           "lr_d=1", "device=cuda:1"], preset("tiny32"))
    assert (cfg.iterations, cfg.lr_g, cfg.precision, cfg.augment, cfg.lr_d, cfg.device) == \
        (50, 1e-3, "bf16", True, 1.0, "cuda:1")
    with pytest.raises(ConfigError, match="config key: expected a Config field .*found 'iters'. "
                                          "Did you mean 'iterations'?"):
        parse_overrides(["iters=5"], preset("tiny32"))
    with pytest.raises(ConfigError, match="iterations: expected a value of type int, found "
                                          "'abc'"):
        parse_overrides(["iterations=abc"], preset("tiny32"))
    with pytest.raises(ConfigError, match="--set: expected key=value, found 'iterations'"):
        parse_overrides(["iterations"], preset("tiny32"))
    with pytest.raises(ConfigError, match="augment: expected true or false, found 'maybe'"):
        parse_overrides(["augment=maybe"], preset("tiny32"))


def test_every_field_has_help_and_is_described_with_type_and_default():
    helps = field_help()
    assert set(helps) == set(Config().to_dict())
    assert all(text.strip() for text in helps.values()), [k for k, v in helps.items() if not v]
    assert helps["lr_d"] == helps["lr_g"] and "Adam learning rates" in helps["lr_d"]
    text = describe_fields()
    for name, value in Config().to_dict().items():
        assert f"  {name} (" in text and f"default {value!r})" in text, name
    assert "  size (int, default 256): Edge length" in text
    assert all(len(line) <= 100 for line in text.splitlines())


def test_channel_rule_keeps_groupnorm_valid():
    for width in (0.1, 0.125, 0.25, 0.5, 1.0, 2.0):
        cfg = Config(size=32, width=width)
        for c in (16, 32, 64, 128, 256, 512):
            assert cfg.channels(c) % 8 == 0 and cfg.channels(c) >= 8
