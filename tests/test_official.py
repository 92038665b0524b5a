"""The published networks: parameter counts, weight names and shapes, and importing their files.

Files in the published layout are made here from random kit networks with
``to_official_state_dict`` (``{'model': {'module.<name>': tensor}, 'optimizer': ...}``, as the
published ``train.py`` saves them); the published code itself is not needed.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch
from torch import nn

from hagan.checkpoint import CheckpointError, load_models
from hagan.cli import main as cli_main
from hagan.config import preset
from hagan.errors import ConfigError
from hagan.models import count_parameters
from hagan.official import (
    KIND_CLASSES,
    load_official,
    official_shapes,
    read_official_file,
    to_official_state_dict,
)

# Parameter counts in millions, as published (reference doc, section 2.9).
PUBLISHED_MILLIONS = {
    128: {"G": 52.52, "D": 7.24, "E": 0.16, "SubE": 19.66},
    256: {"G": 52.52, "D": 7.40, "E": 0.16, "SubE": 19.66},
}
EXACT_COUNTS = {  # regression guard: the exact integers these networks have
    128: {"G": 52_518_210, "D": 7_241_442, "E": 161_152, "SubE": 19_663_168},
    256: {"G": 52_518_210, "D": 7_402_258, "E": 161_152, "SubE": 19_663_264},
}


@pytest.mark.parametrize("size", [128, 256])
@pytest.mark.parametrize("kind", ["G", "D", "E", "SubE"])
def test_parameter_counts(size: int, kind: str) -> None:
    with torch.device("meta"):
        net = KIND_CLASSES[kind](preset(f"paper{size}"))
    n = count_parameters(net)
    assert round(n / 1e6, 2) == PUBLISHED_MILLIONS[size][kind]
    assert n == EXACT_COUNTS[size][kind]


# Hand-written from the published layer tables: (size, kind, num_classes) -> {name: shape}.
PUBLISHED_SHAPES: dict[tuple[int, str, int], dict[str, tuple[int, ...]]] = {
    (256, "G", 0): {
        "fc1.weight": (32768, 1024), "fc1.bias": (32768,),
        "tp_conv1.weight": (512, 512, 3, 3, 3), "tp_conv3.weight": (256, 512, 3, 3, 3),
        "tp_conv5.weight": (64, 128, 3, 3, 3), "bn5.weight": (64,),
        "tp_conv6.weight": (32, 64, 3, 3, 3), "bn6.bias": (32,),
        "tp_conv7.weight": (1, 32, 3, 3, 3), "tp_conv7.bias": (1,),
        "sub_G.tp_conv1.weight": (32, 64, 3, 3, 3), "sub_G.bn2.weight": (16,),
        "sub_G.tp_conv3.weight": (1, 16, 3, 3, 3),
    },
    (128, "G", 3): {"fc1.weight": (32768, 1027), "tp_conv7.weight": (1, 32, 3, 3, 3)},
    (256, "D", 0): {
        "conv1.weight": (16, 1, 4, 4, 4), "conv1.u0": (1, 16), "conv1.sv0": (1,),
        "conv3.weight": (64, 32, 4, 4, 4), "conv4.weight": (128, 64, 2, 4, 4),
        "conv6.weight": (512, 256, 1, 4, 4), "conv7.weight": (128, 512, 1, 4, 4),
        "fc1.weight": (64, 129), "fc2.weight": (1, 64), "fc2.u0": (1, 1),
        "sub_D.conv1.weight": (32, 1, 4, 4, 4), "sub_D.conv4.weight": (256, 128, 4, 4, 4),
        "sub_D.conv5.weight": (1, 256, 4, 4, 4),
    },
    (128, "D", 0): {
        "conv2.weight": (32, 1, 4, 4, 4), "conv7.weight": (128, 512, 1, 4, 4),
        "sub_D.conv2.weight": (64, 1, 4, 4, 4), "sub_D.conv5.weight": (1, 256, 4, 4, 4),
    },
    (256, "D", 3): {"fc2_class.weight": (3, 64), "sub_D.conv5.weight": (4, 256, 4, 4, 4)},
    (128, "E", 0): {
        "conv1.weight": (32, 1, 4, 4, 4), "bn1.weight": (32,),
        "conv2.weight": (32, 32, 3, 3, 3), "conv3.weight": (64, 32, 4, 4, 4), "bn3.bias": (64,),
    },
    (256, "SubE", 0): {
        "conv1.weight": (32, 64, 4, 4, 4), "bn1.weight": (32,),
        "conv2.weight": (64, 32, 4, 4, 4), "conv4.weight": (256, 128, 4, 4, 4),
        "conv5.weight": (1024, 256, 4, 4, 4), "conv5.bias": (1024,),
    },
    (128, "SubE", 0): {"conv2.weight": (64, 64, 4, 4, 4), "conv5.weight": (1024, 256, 4, 4, 4)},
}
# The layer (module) names of each published network, without weight/bias/u0/sv0.
PUBLISHED_LAYERS = {
    (256, "G"): {"fc1", *(f"tp_conv{i}" for i in range(1, 8)), *(f"bn{i}" for i in range(1, 7)),
                 "sub_G.tp_conv1", "sub_G.tp_conv2", "sub_G.tp_conv3", "sub_G.bn1", "sub_G.bn2"},
    (256, "D"): {*(f"conv{i}" for i in range(1, 8)), "fc1", "fc2",
                 *(f"sub_D.conv{i}" for i in range(1, 6))},
    (128, "D"): {*(f"conv{i}" for i in range(2, 8)), "fc1", "fc2",
                 *(f"sub_D.conv{i}" for i in range(2, 6))},
    (256, "SubE"): {*(f"conv{i}" for i in range(1, 6)), *(f"bn{i}" for i in range(1, 5))},
    (128, "SubE"): {*(f"conv{i}" for i in range(2, 6)), *(f"bn{i}" for i in range(2, 5))},
    (128, "E"): {"conv1", "conv2", "conv3", "bn1", "bn2", "bn3"},
}


@pytest.mark.parametrize("key", list(PUBLISHED_SHAPES), ids=str)
def test_published_names_and_shapes(key: tuple[int, str, int]) -> None:
    size, kind, num_classes = key
    shapes = official_shapes(kind, size, num_classes=num_classes)
    for name, shape in PUBLISHED_SHAPES[key].items():
        assert shapes.get(name) == shape, name


@pytest.mark.parametrize("key", list(PUBLISHED_LAYERS), ids=str)
def test_published_layer_names(key: tuple[int, str]) -> None:
    size, kind = key
    assert {k.rpartition(".")[0] for k in official_shapes(kind, size)} == PUBLISHED_LAYERS[key]


def test_generator_and_encoder_layouts_do_not_depend_on_size() -> None:
    for kind in ("G", "E"):
        assert official_shapes(kind, 128) == official_shapes(kind, 256)


# ---------------------------------------------------------------------------------------------
# Files in the published layout
# ---------------------------------------------------------------------------------------------
def write_published(net: nn.Module, kind: str, size: int, path: Path) -> Path:
    """Save like the published train.py: DataParallel prefix and an Adam state."""
    state = {f"module.{k}": v for k, v in to_official_state_dict(net, kind, size).items()}
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-4, betas=(0.0, 0.999))
    for p in net.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()  # zero gradients: the weights stay, the optimizer gets a real state
    torch.save({"model": state, "optimizer": optimizer.state_dict()}, path)
    return path


def random_net(kind: str, size: int, num_classes: int = 0, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    net = KIND_CLASSES[kind](preset(f"paper{size}", num_classes=num_classes))
    if kind == "D":  # move u0 away from its initial value, as in a trained discriminator
        slab, low = torch.rand(1, 1, size // 8, size, size), torch.rand(1, 1, *3 * (size // 4,))
        with torch.no_grad():
            net(slab, low, 7)
    return net.eval()


@pytest.fixture(scope="module")
def published_128(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[nn.Module, Path]]:
    """Random paper128 networks (D and G conditional with 3 classes) and their published files."""
    folder = tmp_path_factory.mktemp("published128")
    files = {}
    for kind in ("G", "D", "E", "SubE"):
        net = random_net(kind, 128, num_classes=3 if kind in "GD" else 0)
        files[kind] = (net, write_published(net, kind, 128, folder / f"{kind}_iter80000.pth"))
    return files


def _same_state(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_round_trip_128(published_128: dict[str, tuple[nn.Module, Path]]) -> None:
    paths = {k: p for k, (_, p) in published_128.items()}
    loaded = load_official(128, paths["G"], encoder=paths["E"], sub_encoder=paths["SubE"],
                           discriminator=paths["D"], num_classes=3)
    assert loaded.config.size == 128 and loaded.config.width == 1.0
    nets = loaded.networks()
    assert set(nets) == {"G", "D", "E", "SubE"}
    for kind, (original, _) in published_128.items():
        assert _same_state(original, nets[kind]), kind
        assert not nets[kind].training
    # Same weights, so the same outputs; inputs are kept small (all parts are convolutional).
    torch.manual_seed(1)
    z, labels = torch.randn(1, 1024), torch.tensor([2])
    slab, low = torch.rand(1, 1, 16, 128, 128) * 2 - 1, torch.rand(1, 1, 32, 32, 32) * 2 - 1
    features = torch.randn(1, 64, 32, 32, 32)
    G0, D0, E0, S0 = (published_128[k][0] for k in ("G", "D", "E", "SubE"))
    G1 = nets["G"]
    with torch.no_grad():
        onehot = torch.nn.functional.one_hot(labels, 3).float()
        h0 = G0.trunk.fc(torch.cat([z, onehot], 1)).view(1, 512, 4, 4, 4)
        h1 = G1.trunk.fc(torch.cat([z, onehot], 1)).view(1, 512, 4, 4, 4)
        for b0, b1 in zip(G0.trunk.blocks, G1.trunk.blocks):
            h0, h1 = b0(h0[:, :, :4, :4, :4]), b1(h1[:, :, :4, :4, :4])  # crop: cheap
            assert torch.equal(h0, h1)
        small = features[:, :, :2, :8, :8]
        assert torch.equal(G1.decode_slab(small), G0.decode_slab(small))
        assert torch.equal(G1.low_res_head(small), G0.low_res_head(small))
        for out, ref in zip(nets["D"](slab, low, 50), D0(slab, low, 50)):
            assert torch.equal(out, ref)
        assert torch.equal(nets["E"](slab), E0(slab))
        assert torch.equal(nets["SubE"](features), S0(features))


@pytest.mark.parametrize("kind", ["D", "SubE"])
def test_round_trip_256(kind: str, tmp_path: Path) -> None:
    net = random_net(kind, 256)
    path = write_published(net, kind, 256, tmp_path / "net.pth")
    loaded = load_official(256, None, **{"discriminator" if kind == "D" else "sub_encoder": path})
    assert _same_state(net, loaded.networks()[kind])


def test_bare_state_dict_without_prefix_is_accepted(tmp_path: Path) -> None:
    net = random_net("E", 128)
    torch.save(to_official_state_dict(net, "E", 128), tmp_path / "E.pth")
    assert _same_state(net, load_official(128, None, encoder=tmp_path / "E.pth").encoder)


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------
def test_wrong_size_is_detected(published_128: dict[str, tuple[nn.Module, Path]]) -> None:
    path = published_128["SubE"][1]
    with pytest.raises(CheckpointError, match=r"SubE_iter80000.pth does not look like a 256\^3 "
                       r"HA-GAN sub-encoder \(E\^G\): conv1.weight.* missing; did you mean "
                       r"--size 128\?"):
        load_official(256, None, sub_encoder=path)
    with pytest.raises(CheckpointError, match=r"256\^3 HA-GAN discriminator.*did you mean "
                       r"--size 128 --num-classes 3\?"):
        load_official(256, None, discriminator=published_128["D"][1])


def test_wrong_class_count_is_detected(published_128: dict[str, tuple[nn.Module, Path]]) -> None:
    with pytest.raises(CheckpointError, match=r"generator: fc1.weight has shape \(32768, 1027\), "
                       r"expected \(32768, 1024\); did you mean --num-classes 3\?"):
        load_official(128, published_128["G"][1])


def test_256_discriminator_as_128(tmp_path: Path) -> None:
    path = write_published(random_net("D", 256), "D", 256, tmp_path / "D.pth")
    with pytest.raises(CheckpointError, match=r"unexpected weights conv1.weight.*--size 256\?"):
        load_official(128, None, discriminator=path)


def test_missing_key(tmp_path: Path) -> None:
    state = to_official_state_dict(random_net("E", 128), "E", 128)
    del state["conv3.weight"]
    torch.save({"model": state}, tmp_path / "E.pth")
    with pytest.raises(CheckpointError, match="encoder .*: conv3.weight is missing$"):
        load_official(128, None, encoder=tmp_path / "E.pth")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"G.pth \(does not exist\)"):
        load_official(256, tmp_path / "G.pth")


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="is not a file"):
        read_official_file(tmp_path)


@pytest.mark.parametrize(("content", "why"), [(b"", "is empty"),
                                              (b"hello world", "is not a PyTorch file"),
                                              (bytes(range(256)) * 8, "is not a PyTorch file")])
def test_garbage_file(tmp_path: Path, content: bytes, why: str) -> None:
    (tmp_path / "G.pth").write_bytes(content)
    with pytest.raises(CheckpointError, match=f"G.pth {why}"):
        load_official(128, tmp_path / "G.pth")


@pytest.mark.parametrize("obj", [{"optimizer": {}}, [1, 2], {"model": {"w": 1.0}}])
def test_no_weights(tmp_path: Path, obj: object) -> None:
    torch.save(obj, tmp_path / "G.pth")
    with pytest.raises(CheckpointError, match="has no 'model' state dict"):
        read_official_file(tmp_path / "G.pth")


def test_unsafe_file_is_refused(tmp_path: Path) -> None:
    state = to_official_state_dict(random_net("E", 128), "E", 128)
    torch.save({"model": state, "args": argparse.Namespace(lr=1.0)}, tmp_path / "E.pth")
    with pytest.raises(CheckpointError, match="holds argparse.Namespace, not only tensors"):
        load_official(128, None, encoder=tmp_path / "E.pth")


def test_unsupported_size_and_no_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"--size: expected 128 or 256 \(the published HA-GAN "
                                          r"networks\), found 64"):
        load_official(64, tmp_path / "G.pth")
    with pytest.raises(ConfigError, match="expected at least the generator file, found none"):
        load_official(128, None)


def test_to_official_rejects_other_layouts() -> None:
    with torch.device("meta"):
        net = KIND_CLASSES["SubE"](preset("paper256"))
    with pytest.raises(ConfigError, match="the layers of the published 128\\^3 network, found "
                                          "layer 'blocks.3.conv"):
        to_official_state_dict(net, "SubE", 128)
    with pytest.raises(ValueError, match="kind must be one of G, D, E, SubE"):
        to_official_state_dict(net, "Sub_E", 256)


# ---------------------------------------------------------------------------------------------
# hagan import-official
# ---------------------------------------------------------------------------------------------
def test_cli(published_128: dict[str, tuple[nn.Module, Path]], tmp_path: Path,
             capsys: pytest.CaptureFixture[str]) -> None:
    paths = {k: str(p) for k, (_, p) in published_128.items()}
    out = tmp_path / "kit.pt"
    argv = ["import-official", "--size", "128", "--generator", paths["G"], "--encoder",
            paths["E"], "--num-classes", "3", "--out", str(out)]
    assert cli_main(argv) == 0
    cfg, nets = load_models(out)
    assert (cfg.size, cfg.width, cfg.num_classes, set(nets)) == (128, 1.0, 3, {"G", "E"})
    assert _same_state(nets["E"], published_128["E"][0])
    assert _same_state(nets["G"], published_128["G"][0])
    assert cli_main(argv) == 2  # refuses to overwrite
    assert "(already exists). Pass --force" in capsys.readouterr().err
    assert cli_main(["import-official", "--size", "256", "--generator", paths["G"],
                     "--sub-encoder", paths["SubE"], "--num-classes", "3", "--out", str(out),
                     "--force"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "SubE_iter80000.pth does not look like" in err
    assert "did you mean --size 128?" in err


# ---------------------------------------------------------------------------------------------
# Shareable weights: safetensors from import-official and export, read wherever models load
# ---------------------------------------------------------------------------------------------
def _printed_sha256(text: str) -> str:
    return next(line.split()[1] for line in text.splitlines() if line.startswith("sha256 "))


def test_import_official_writes_safetensors_and_prints_its_sha256(
        published_128: dict[str, tuple[nn.Module, Path]], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    import hashlib

    from safetensors import safe_open

    from hagan.weights import looks_like_safetensors

    out = tmp_path / "paper128.safetensors"
    assert cli_main(["import-official", "--size", "128", "--generator",
                     str(published_128["G"][1]), "--num-classes", "3", "--out", str(out)]) == 0
    assert looks_like_safetensors(out)
    assert _printed_sha256(capsys.readouterr().out) == hashlib.sha256(out.read_bytes()).hexdigest()
    with safe_open(str(out), framework="pt") as fh:
        meta = fh.metadata()
    assert meta["format"] == "hagan-kit weights" and meta["networks"] == "G"
    assert '"num_classes": 3' in meta["config"] and "G_iter80000.pth" in meta["source"]
    cfg, nets = load_models(out)
    assert cfg.num_classes == 3 and _same_state(nets["G"], published_128["G"][0])


def test_export_writes_a_runs_networks_and_config(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    import hashlib

    import nibabel as nib
    import numpy as np

    from hagan import checkpoint as ckpt
    from hagan.models import build_models

    cfg = preset("tiny32", num_classes=2)
    torch.manual_seed(0)
    run = tmp_path / "run"
    geometry = {"path": "/elsewhere/ct32", "size": 32, "spacing_mm": [3.0, 3.0, 3.0],
                "modality": "ct", "window": [-1024.0, 600.0], "axes": None}
    ckpt.save_models(ckpt.checkpoint_path(run, 7), cfg, build_models(cfg), step=7,
                     data=geometry)
    out = tmp_path / "tiny.safetensors"
    assert cli_main(["export", str(run), "--out", str(out)]) == 0
    assert _printed_sha256(capsys.readouterr().out) == hashlib.sha256(out.read_bytes()).hexdigest()
    cfg_run, nets_run = load_models(run)
    cfg_st, nets_st = load_models(out)
    assert cfg_st == cfg_run and set(nets_st) == {"G", "D", "E", "SubE"}
    assert all(_same_state(nets_st[k], nets_run[k]) for k in nets_run)
    assert cli_main(["export", str(run), "--out", str(out)]) == 2  # exists: refused
    assert "already exists" in capsys.readouterr().err
    # the weights file alone is enough to write samples at the training data's voxel size, in HU
    assert cli_main(["generate", str(out), "--n", "1", "--label", "1", "--device", "cpu",
                     "--out", str(tmp_path / "samples")]) == 0
    img = nib.load(str(tmp_path / "samples" / "sample_0000.nii.gz"))
    assert np.allclose(img.header.get_zooms(), (3.0, 3.0, 3.0))
    assert img.get_data_dtype() == np.int16


def test_corrupt_or_mismatched_weights_files_get_one_clear_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from safetensors.torch import save

    from hagan.models import build_models
    from hagan.weights import write_weights

    cfg = preset("tiny32")
    good = tmp_path / "good.safetensors"
    write_weights(good, cfg, {"G": build_models(cfg)["G"]})
    data = good.read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_models(cut)
    other = tmp_path / "other.safetensors"  # a safetensors file, but not the kit's
    other.write_bytes(save({"w": torch.zeros(2)}, metadata={"format": "pt"}))
    with pytest.raises(CheckpointError, match="hagan-kit weights"):
        load_models(other)
    small64 = preset("small64")
    wrong = tmp_path / "wrong.safetensors"  # tiny32 tensors under a small64 config
    tensors = {f"G.{k}": v.contiguous() for k, v in build_models(cfg)["G"].state_dict().items()}
    wrong.write_bytes(save(tensors, metadata={"format": "hagan-kit weights",
                                              "format_version": "1",
                                              "config": json.dumps(small64.to_dict())}))
    with pytest.raises(CheckpointError, match="G weights do not fit a 64\\^3 model"):
        load_models(wrong)
    for bad in (cut, other, wrong):
        assert cli_main(["generate", str(bad), "--n", "1", "--spacing", "1", "1", "1",
                         "--out", str(tmp_path / "samples")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and str(bad) in err
