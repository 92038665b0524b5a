"""Checkpoints: atomic writes, safe loading, broken files, pruning and the model round trip."""

import os
import pickle

import pytest
import torch

from hagan import checkpoint as ckpt
from hagan.config import preset
from hagan.models import build_models


def test_models_round_trip(tmp_path):
    cfg = preset("tiny32", num_classes=2)
    nets = build_models(cfg)
    path = ckpt.save_models(tmp_path / "m.pt", cfg, nets, step=7)
    cfg2, nets2 = ckpt.load_models(path)
    assert cfg2 == cfg
    z = torch.randn(2, cfg.latent_dim)
    y = torch.tensor([0, 1])
    nets["G"].eval()
    assert torch.equal(nets["G"].generate(z, y), nets2["G"].generate(z, y))
    assert not nets2["G"].training


def test_run_folder_resolves_to_newest_good_checkpoint(tmp_path):
    cfg = preset("tiny32")
    nets = build_models(cfg)
    for step in (1, 2, 3):
        ckpt.save_models(ckpt.checkpoint_path(tmp_path, step), cfg, nets, step=step)
    newest = ckpt.checkpoint_path(tmp_path, 3)
    newest.write_bytes(newest.read_bytes()[:1000])  # truncated by a crash
    ckpt.checkpoint_path(tmp_path, 4).write_bytes(b"")  # zero bytes
    assert ckpt.resolve(tmp_path) == ckpt.checkpoint_path(tmp_path, 2)
    # only loadable checkpoints count: the newest good one (2) is kept, the broken ones are
    # set aside under another name (not deleted), the older good one is pruned
    ckpt.prune_checkpoints(tmp_path, keep=1)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["ckpt_00000002.pt"]
    assert sorted(p.name for p in (tmp_path / ckpt.CHECKPOINT_DIR).glob("*.damaged")) == [
        "ckpt_00000003.pt.damaged", "ckpt_00000004.pt.damaged"]


@pytest.mark.parametrize("content, message", [
    (b"", "is empty"),
    (b"not a checkpoint at all", "not written by torch.save"),
])
def test_broken_files_are_clear_errors(tmp_path, content, message):
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    with pytest.raises(ckpt.CheckpointError, match=message):
        ckpt.load_checkpoint(path)


def test_missing_and_foreign_files(tmp_path):
    with pytest.raises(ckpt.CheckpointError, match="does not exist"):
        ckpt.load_checkpoint(tmp_path / "nope.pt")
    torch.save({"model": {"w": torch.zeros(1)}}, tmp_path / "foreign.pt")
    with pytest.raises(ckpt.CheckpointError, match="not a hagan-kit checkpoint.*import-official"):
        ckpt.load_checkpoint(tmp_path / "foreign.pt")
    with pytest.raises(ckpt.CheckpointError, match="no loadable checkpoint"):
        ckpt.resolve(tmp_path)


class _Payload:
    """Unpickling this object would create a file: the proof that code ran."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_malicious_pickle_is_refused_and_does_not_run(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"kind": ckpt.KIND, "payload": _Payload(str(marker))}, path,
               pickle_protocol=pickle.HIGHEST_PROTOCOL)
    assert not marker.exists()
    with pytest.raises(ckpt.CheckpointError, match="refusing to load"):
        ckpt.load_checkpoint(path)
    assert not marker.exists()


def test_failed_write_keeps_previous_checkpoint(tmp_path, monkeypatch):
    cfg = preset("tiny32")
    path = tmp_path / "c.pt"
    ckpt.save_models(path, cfg, build_models(cfg), step=1)
    before = path.read_bytes()

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ckpt.torch, "save", disk_full)
    with pytest.raises(OSError, match="No space left"):
        ckpt.save_models(path, cfg, build_models(cfg), step=2)
    assert path.read_bytes() == before
    assert [p for p in os.listdir(tmp_path) if p.endswith(".tmp")] == []
