"""Slab sampling (hagan.slab) against the published train.py / Model_HA_GAN_* arithmetic."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hagan import slab
from hagan.config import preset


def test_draws_cover_zero_to_seven_eighths_and_honour_alignment():
    gen = torch.Generator().manual_seed(0)
    free = slab.draw_slab_starts(64, 4000, gen)
    assert int(free.min()) == 0 and int(free.max()) == 56  # np.random.randint(0, 64*7/8 + 1)
    assert len(set(free.tolist())) == 57
    aligned = slab.draw_slab_starts(64, 4000, gen, align=True)
    assert set(aligned.tolist()) == set(range(0, 57, 4))


def test_single_draw_is_the_first_of_a_batch_of_draws():
    a = slab.draw_slab_start(128, torch.Generator().manual_seed(3), align=True)
    b = slab.draw_slab_starts(128, 5, torch.Generator().manual_seed(3), align=True)
    assert a == int(b[0])


def test_crops_position_and_low_res_match_the_published_arithmetic():
    S, c = 32, 13
    x = torch.randn(2, 1, S, S, S)
    assert torch.equal(slab.crop_slab(x, c), x[:, :, c:c + S // 8])
    h = torch.randn(2, 5, S // 4, S // 4, S // 4)  # features at 1/4 resolution
    assert torch.equal(slab.crop_feature_slab(h, c), h[:, :, c // 4:c // 4 + 1])  # crop_idx//4
    assert slab.slab_position(c, 128) == c / 112.0  # published 128^3: crop_idx / 112.
    assert slab.slab_position(c, 256) == c / 224.0  # published 256^3: crop_idx / 224.
    assert torch.equal(slab.low_res(x), F.interpolate(x, scale_factor=0.25))
    assert list(slab.slab_starts(S)) == [0, 4, 8, 12, 16, 20, 24, 28]


def test_teaching_slab_draws_follow_align_slabs():
    """The notebook helper drew unaligned starts even with align_slabs=True."""
    from hagan.lessons import draw_slab_starts

    starts = draw_slab_starts(preset("tiny32", align_slabs=True), 200, seed=1)
    assert all(int(c) % 4 == 0 for c in starts)
    unaligned = draw_slab_starts(preset("tiny32"), 200, seed=1)
    assert any(int(c) % 4 for c in unaligned)
