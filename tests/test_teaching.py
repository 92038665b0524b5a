"""The notebooks' helper modules, directly: teaching (plumbing), lessons (notebook 02), scaling
(the naive-vs-hierarchical cost measurements), the figures of viz, and the ablation without D^L
(notebook 03's exercise)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from hagan import lessons, scaling, teaching, viz  # noqa: E402
from hagan.config import preset  # noqa: E402
from hagan.models import Discriminator, Generator, build_models, count_parameters  # noqa: E402


def test_settings_scale_defaults_and_overrides():
    s = teaching.settings(smoke=True, device="cpu", verbose=False, iterations=7, n_samples=0)
    assert (s.scale, s.preset, s.iterations) == ("smoke", "tiny32", 7)
    assert s.n_samples == teaching.SCALE_DEFAULTS["smoke"]["n_samples"]  # 0 keeps the default
    with pytest.raises(ValueError, match="nonsense"):
        teaching.settings(smoke=True, device="cpu", verbose=False, nonsense=1)


def test_show_saves_the_png_and_closes_the_figure(tmp_path):
    import matplotlib.pyplot as plt

    fig = viz.plot_bars({"a": 1.0, "b": 2.0}, "title", "seconds")
    teaching.show(fig, tmp_path / "figures" / "bars.png")
    assert (tmp_path / "figures" / "bars.png").read_bytes()[:4] == b"\x89PNG"
    assert not plt.fignum_exists(fig.number)


def test_trace_shapes_of_the_paper_256_model():
    shapes = dict(lessons.trace_shapes(preset("paper256"), slab_start=112))
    assert shapes["G^A trunk: features"] == (1, 64, 64, 64, 64)
    assert shapes["G^H high-res head: image slab (depth S/8)"] == (1, 1, 32, 256, 256)
    assert shapes["inference: G^H on all features = full volume"] == (1, 1, 256, 256, 256)


def test_slab_coverage_counts_each_slice_inside_a_slab():
    cover = lessons.slab_coverage(np.array([0, 2]), size=8, depth=3)
    assert cover.tolist() == [1, 1, 2, 1, 1, 0, 0, 0]


def test_parameter_table_counts_like_count_parameters():
    (name, size, counts), = lessons.parameter_table(("tiny32",))
    nets = build_models(preset("tiny32"))
    assert (name, size) == ("tiny32", 32)
    assert counts == {k: count_parameters(v) / 1e6 for k, v in nets.items()}


def test_readme_preset_table_matches_the_networks():
    """Every preset is in the README's table, with its parameter counts to 0.01 M."""
    import re
    from pathlib import Path

    from hagan.config import PRESETS

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    rows = dict(re.findall(r"^\| `(\w+)` \| \d+³ \|[^|]+\|[^|]+\| ([^|]+) \|", readme, re.M))
    assert set(rows) == set(PRESETS)
    for name, _size, counts in lessons.parameter_table(tuple(PRESETS)):
        stated = [float(v) for v in re.findall(r"([\d.]+) M", rows[name])]
        assert stated == [round(counts[k], 2) for k in ("G", "D", "E", "SubE")], name


def test_the_hierarchical_step_saves_less_for_backward_than_the_naive_one():
    """The point of notebook 02, measured: memory counts, not times, so deterministic."""
    naive = scaling.step_cost(32, "naive", width=0.125, latent_dim=8)
    hier = scaling.step_cost(32, "hierarchical", width=0.125, latent_dim=8)
    assert hier["status"] == naive["status"] == "ok" and naive["peak_mib"] is None  # CPU
    assert hier["saved_mib"] < naive["saved_mib"]
    assert "saved for backward" in scaling.format_cost(hier)
    with pytest.raises(ValueError, match="naive"):
        scaling.step_cost(32, "other")


def test_plot_losses_takes_records_and_refuses_a_folder(tmp_path):
    records = [{"step": s, "loss_d": 1.0, "loss_g": 2.0, "loss_e": 0.5, "loss_sube": 0.4}
               for s in (1, 2, 3)]
    fig = viz.plot_losses(records)
    assert [len(ax.lines) for ax in fig.axes] == [2, 2]
    with pytest.raises(TypeError, match="read_metrics"):
        viz.plot_losses(tmp_path)
    with pytest.raises(ValueError, match="no training log records"):
        viz.plot_losses([])


def test_viz_plot_embedding_draws_points_and_ellipses():
    coords = {"a": np.zeros((4, 2)), "b": np.ones((3, 2))}
    ellipses = {"a": (np.zeros(2), 2.0, 1.0, 30.0)}
    fig = viz.plot_embedding(coords, ("x", "y"), ellipses, title="t")
    ax = fig.axes[0]
    assert (ax.get_xlabel(), ax.get_ylabel(), ax.get_title()) == ("x", "y", "t")
    assert len(ax.collections) == 2 and len(ax.patches) == 1


def test_the_discriminator_without_d_l_is_half_of_d_h():
    """low_res_critic=False (notebook 03's ablation): no D^L weights, D = D^H / 2, and G^L gets
    no gradient from D."""
    torch.manual_seed(0)
    cfg = preset("tiny32")
    D_full = Discriminator(cfg)
    D_ablated = Discriminator(cfg.replace(low_res_critic=False))
    assert not any(k.startswith("low_res.") for k in D_ablated.state_dict())
    D_ablated.high_res.load_state_dict(D_full.high_res.state_dict())
    G = Generator(cfg)
    slab, low = G(torch.randn(2, cfg.latent_dim), 4)
    logit, _ = D_ablated(slab, low, 4)
    position = torch.full((2,), 4 / cfg.max_slab_start)
    torch.testing.assert_close(logit, D_full.high_res(slab, position)[0] / 2)
    logit.sum().backward()
    assert all(p.grad is None for p in G.low_res_head.parameters())
    assert all(p.grad is not None for p in G.high_res_head.parameters())
