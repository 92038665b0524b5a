"""TensorBoard previews as the published trainer draws them, and the g_iter option."""

from __future__ import annotations

import torch
from helpers import make_random_dataset

from hagan.config import preset
from hagan.train import Trainer


def test_previews_show_real_generated_and_reconstructed_slabs(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    data = make_random_dataset(tmp_path / "data", n=2, size=32)
    cfg = preset("tiny32", iterations=2, batch_size=2, image_every=2, log_every=1,
                 checkpoint_every=2, tensorboard=True, progress=False, data=str(data))
    tr = Trainer(cfg, tmp_path / "run", resume=False)
    tr.train()
    events = EventAccumulator(str(tmp_path / "run" / "tb"), size_guidance={"images": 0})
    events.Reload()
    tags = events.Tags()["images"]
    assert "preview/low_res" in tags and "preview/slabs" in tags
    assert [e.step for e in events.Images("preview/slabs")] == [2]  # only on image_every
    assert tr.last_images == {}  # the slabs are dropped once drawn


def test_g_iter_runs_that_many_generator_updates(tmp_path):
    x = torch.rand(2, 1, 32, 32, 32) * 2 - 1
    counts = {}
    for g_iter in (1, 3):
        cfg = preset("tiny32", batch_size=2, g_iter=g_iter, tensorboard=False, progress=False)
        tr = Trainer(cfg, tmp_path / f"g{g_iter}", dataset=list(x), resume=False)
        tr.step(x)
        counts[g_iter] = int(tr.opt["G"].state[next(iter(tr.G.parameters()))]["step"])
    assert counts == {1: 1, 3: 3}
