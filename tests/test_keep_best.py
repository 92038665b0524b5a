"""Model selection during training (``Config.keep_best_from``): the validation score
(:class:`hagan.metrics.Validation`), ``checkpoints/best.pt``, and what a run folder then means."""

from __future__ import annotations

import pytest
import torch
from helpers import make_random_dataset

from hagan.checkpoint import (
    best_path,
    checkpoint_path,
    load_checkpoint,
    read_best,
    resolve,
    save_checkpoint,
)
from hagan.config import preset
from hagan.data import PreparedDataset
from hagan.errors import CheckpointError, ConfigError, DataError
from hagan.metrics import DIVERSITY_TOLERANCE, FID_RATIO_TOLERANCE, Validation
from hagan.models import build_models
from hagan.train import Trainer, read_metrics, train
from hagan.viz import plot_validation


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    # 8 volumes: with the default holdout_fraction 0.2, 6 train and 2 held-out
    return make_random_dataset(tmp_path_factory.mktemp("data") / "data", n=8, size=32)


def _halves(data):
    full = PreparedDataset(data, size=32)
    return full.select([r.file for r in full.records[:6]]), full.select(
        [r.file for r in full.records[6:]])


def test_validation_score_flags_a_collapsed_generator(data):
    train_set, held = _halves(data)
    val = Validation(train_set, held, 32, n=8)
    torch.manual_seed(0)
    G = build_models(preset("tiny32"))["G"].eval()
    rng_before = torch.get_rng_state()
    varied = val(G)
    with torch.no_grad():
        G.trunk.fc.weight.zero_()  # the output no longer depends on z: one volume for all
    collapsed = val(G)
    assert torch.equal(torch.get_rng_state(), rng_before)  # training's RNG is left alone
    assert collapsed["val_ms_ssim"] > 0.999  # identical volumes
    assert varied["val_ms_ssim"] < collapsed["val_ms_ssim"]
    for s in (varied, collapsed):  # the documented formula, from the reported parts
        expected = max(abs(s["val_ms_ssim"] - s["val_ms_ssim_real"]) / DIVERSITY_TOLERANCE,
                       s["val_fid_ratio"] / FID_RATIO_TOLERANCE)
        assert s["val_score"] == pytest.approx(expected, abs=1e-3)  # parts rounded to 4 dp
    # the collapsed model is out of the diversity tolerance by (1 - real) / 0.1
    assert collapsed["val_score"] >= (1 - collapsed["val_ms_ssim_real"]) / 0.1 - 1e-3
    assert not G.training  # left in the mode it came in
    # the same generator scores the same (seeded latents, pairs and features)
    assert val(G) == collapsed


def test_validation_needs_two_heldout_volumes(data):
    train_set, held = _halves(data)
    with pytest.raises(DataError, match="at least 2 held-out"):
        Validation(train_set, held.select([held.records[0].file]), 32)


def test_keep_best_needs_heldout_volumes_and_the_trainers_split(data, tmp_path):
    with pytest.raises(ConfigError, match="holdout_fraction"):
        preset("tiny32", keep_best_from=10, holdout_fraction=0.0)
    with pytest.raises(ConfigError, match="keep_best_from"):
        preset("tiny32", keep_best_from=-1)
    cfg = preset("tiny32", data=str(data), keep_best_from=2, iterations=2, progress=False,
                 tensorboard=False)
    with pytest.raises(ConfigError, match="dataset passed"):
        Trainer(cfg, tmp_path / "run", dataset=PreparedDataset(data, size=32))
    # a run too short to reach keep_best_from validates nothing, so it needs no held-out split
    # (notebook 07 and the benchmarks train a few demo32 iterations on a given dataset)
    Trainer(cfg.replace(keep_best_from=3), tmp_path / "run2",
            dataset=PreparedDataset(data, size=32))


def test_keep_best_scores_checkpoints_keeps_the_best_and_changes_no_weight(data, tmp_path):
    base = preset("tiny32", data=str(data), iterations=6, checkpoint_every=2, log_every=3,
                  keep_checkpoints=5, progress=False, tensorboard=False)
    plain = train(base, tmp_path / "plain")
    run = tmp_path / "best"
    result = train(base.replace(keep_best_from=4), run)
    # training is unchanged by the validations: the same weights at the end
    a = load_checkpoint(plain.checkpoint)["models"]["G"]
    b = load_checkpoint(result.checkpoint)["models"]["G"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert plain.best is None and result.best == best_path(run)
    # iterations 4 and 6 were scored, each in its own record (log_every 3 does not hit 4)
    checks = [r for r in read_metrics(run) if "val_score" in r]
    assert [r["step"] for r in checks] == [4, 6]
    best_row = min(checks, key=lambda r: r["val_score"])
    assert [r["val_best"] for r in checks] == [1, int(checks[1]["val_score"] < checks[0]
                                                      ["val_score"])]
    state = load_checkpoint(result.best)
    assert state["step"] == best_row["step"]
    assert state["validation"]["val_score"] == best_row["val_score"]
    saved = load_checkpoint(checkpoint_path(run, best_row["step"]))["models"]["G"]
    assert all(torch.equal(saved[k], state["models"]["G"][k]) for k in saved)
    fig = plot_validation(read_metrics(run), title="validation")
    assert [ax.get_xlabel() for ax in fig.axes] == ["iteration", "iteration"]
    assert all(ax.get_ylabel() for ax in fig.axes) and fig._suptitle.get_text() == "validation"
    with pytest.raises(ValueError, match="keep_best_from"):
        plot_validation(read_metrics(tmp_path / "plain"))
    # the run folder now means best.pt; a plain run folder its newest checkpoint
    assert resolve(run) == best_path(run)
    assert resolve(tmp_path / "plain") == plain.checkpoint


def test_resume_reads_the_best_score_and_refuses_a_damaged_best(data, tmp_path):
    cfg = preset("tiny32", data=str(data), iterations=4, checkpoint_every=2, log_every=2,
                 keep_checkpoints=5, keep_best_from=2, progress=False, tensorboard=False)
    run = tmp_path / "run"
    train(cfg, run)
    kept = read_best(run, 4)
    assert kept is not None and kept["step"] in (2, 4)
    # continued: later checkpoints must beat the stored score to replace best.pt
    train(cfg.replace(iterations=6), run)
    checks = [r for r in read_metrics(run) if "val_score" in r]
    assert [r["step"] for r in checks] == [2, 4, 6]
    now = read_best(run, 6)
    assert now is not None
    assert now["val_score"] == min(r["val_score"] for r in checks)

    # a best.pt that does not load stops the run with one line; nothing is replaced
    best_path(run).write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError):
        train(cfg.replace(iterations=8), run)
    assert best_path(run).read_bytes() == b"not a checkpoint"


def test_a_best_from_after_the_resumed_checkpoint_is_set_aside(tmp_path):
    run = tmp_path / "run"
    cfg = preset("tiny32")
    save_checkpoint(best_path(run), {"config": cfg.to_dict(), "step": 10, "models": {},
                                     "validation": {"val_score": 0.5}})
    assert read_best(run, 10) == {"step": 10, "val_score": 0.5}
    assert read_best(run, 8) is None  # the run resumes at 8: best.pt of 10 is not its past
    assert not best_path(run).exists()
    assert (best_path(run).parent / "best.pt.superseded").exists()
    save_checkpoint(best_path(run), {"config": cfg.to_dict(), "step": 4, "models": {}})
    with pytest.raises(CheckpointError, match="no validation score"):
        read_best(run, 8)


def test_hagan_train_names_the_kept_checkpoint(data, tmp_path, capsys):
    from hagan import cli

    run = tmp_path / "run"
    assert cli.main(["train", "--preset", "tiny32", "--data", str(data), "--out", str(run),
                     "--set", "iterations=2", "checkpoint_every=1", "keep_best_from=1",
                     "progress=False", "tensorboard=False"]) == 0
    out = capsys.readouterr().out
    kept = read_best(run, 2)
    assert kept is not None
    assert f"the run's model: {best_path(run)} (iteration {kept['step']}" in out


def test_a_benchmark_step_of_demo32_scores_nothing(tmp_path):
    """bench_train (notebook 07) times Trainer.step of a preset on random volumes passed in:
    demo32 keeps the best checkpoint, but a benchmark never reaches a checkpoint."""
    from hagan.bench import train_step

    step, _ = train_step("demo32", 2, str(tmp_path / "bench"), device="cpu")
    step()
