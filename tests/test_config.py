"""Config: presets, the size rule, validation and --set parsing."""

import pytest

from hagan.config import ALLOWED_SIZES, Config, parse_overrides, preset


def test_presets_and_derived_sizes():
    cfg = preset("paper256")
    assert (cfg.size, cfg.feature_size, cfg.slab_depth, cfg.feature_slab_depth) == (256, 64, 32, 8)
    assert cfg.max_slab_start == 224 and cfg.num_upsamplings == 4
    cfg = preset("paper128")
    assert (cfg.feature_size, cfg.slab_depth, cfg.max_slab_start, cfg.num_upsamplings) == \
        (32, 16, 112, 3)
    assert preset("tiny32").size == 32 and preset("small64").size == 64
    # paper defaults
    assert (cfg.lr_g, cfg.lr_d, cfg.lr_e, cfg.beta1, cfg.beta2) == (1e-4, 4e-4, 1e-4, 0.0, 0.999)


@pytest.mark.parametrize("size", [16, 48, 100, 512])
def test_invalid_sizes_name_the_allowed_ones(size):
    with pytest.raises(ValueError, match="size must be one of 32, 64, 128, 256"):
        Config(size=size)


@pytest.mark.parametrize("kwargs, message", [
    (dict(batch_size=0), "batch_size must be > 0"),
    (dict(lr_d=-1.0), "lr_d must be > 0"),
    (dict(beta1=1.0), r"beta1 must be in \[0, 1\)"),
    (dict(precision="fp8"), "precision must be one of"),
    (dict(device="tpu"), "device must be one of"),
    (dict(num_classes=1), "num_classes must be 0"),
    (dict(width=0.0), "width must be > 0"),
])
def test_validation_messages(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Config(**kwargs)


def test_unknown_preset():
    with pytest.raises(ValueError, match="unknown preset 'paper512'; choose one of"):
        preset("paper512")


def test_overrides_are_typed():
    cfg = parse_overrides(["iterations=50", "lr_g=1e-3", "precision=bf16", "augment=true",
                           "lr_d=1"], preset("tiny32"))
    assert (cfg.iterations, cfg.lr_g, cfg.precision, cfg.augment, cfg.lr_d) == \
        (50, 1e-3, "bf16", True, 1.0)
    with pytest.raises(ValueError, match="unknown config key 'iters'"):
        parse_overrides(["iters=5"], preset("tiny32"))
    with pytest.raises(ValueError, match="iterations expects a value of type int"):
        parse_overrides(["iterations=abc"], preset("tiny32"))
    with pytest.raises(ValueError, match="expects key=value"):
        parse_overrides(["iterations"], preset("tiny32"))
    with pytest.raises(ValueError, match="augment expects true or false"):
        parse_overrides(["augment=maybe"], preset("tiny32"))


def test_channel_rule_keeps_groupnorm_valid():
    for width in (0.1, 0.125, 0.25, 0.5, 1.0, 2.0):
        cfg = Config(size=32, width=width)
        for c in (16, 32, 64, 128, 256, 512):
            assert cfg.channels(c) % 8 == 0 and cfg.channels(c) >= 8
    assert ALLOWED_SIZES == (32, 64, 128, 256)
