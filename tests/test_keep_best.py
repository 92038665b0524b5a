"""Model selection during training (``Config.keep_best_from``): the validation score
(:class:`hagan.metrics.Validation`), ``checkpoints/best.pt``, and what a run folder then means."""

from __future__ import annotations

import json
import logging

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
    from hagan.metrics import evaluate

    report = evaluate(run, n=4, permutations=0, n_pairs=3, progress=False, device="cpu")
    assert (report["checkpoint_file"], report["step"]) == (str(best_path(run)), best_row["step"])
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


def test_too_few_volumes_are_refused_before_training(tmp_path):
    small = make_random_dataset(tmp_path / "small", n=3, size=32)
    cfg = preset("tiny32", data=str(small), iterations=4, checkpoint_every=2, keep_best_from=2,
                 progress=False, tensorboard=False)
    for fraction in (0.2, 0.5):  # 2 train + 1 held-out, then 1 train + 2 held-out
        with pytest.raises(DataError, match="at least 2 training and 2 held-out"):
            Trainer(cfg.replace(holdout_fraction=fraction), tmp_path / f"run{fraction}")


def test_a_best_from_another_run_or_unreadable_is_refused_with_a_way_out(data, tmp_path):
    cfg = preset("tiny32", data=str(data), iterations=2, checkpoint_every=1, keep_best_from=1,
                 progress=False, tensorboard=False)
    run, other = tmp_path / "run", tmp_path / "other"
    train(cfg, run)
    train(cfg.replace(seed=3), other)
    best_path(run).write_bytes(best_path(other).read_bytes())  # another run's kept model
    with pytest.raises(CheckpointError, match="not from this run: its seed is 3"):
        resolve(run)
    with pytest.raises(CheckpointError, match="Move it out"):
        train(cfg.replace(iterations=3), run)
    best_path(run).unlink()
    best_path(run).mkdir()
    with pytest.raises(CheckpointError, match="is not a file"):
        resolve(run)


def test_a_lost_best_is_rewritten_from_its_checkpoint_on_resume(data, tmp_path, caplog):
    cfg = preset("tiny32", data=str(data), iterations=4, checkpoint_every=1, keep_best_from=1,
                 keep_checkpoints=10, progress=False, tensorboard=False)
    run = tmp_path / "run"
    train(cfg, run)
    scores = {r["step"]: r["val_score"] for r in read_metrics(run) if "val_score" in r}
    best_step = min(scores, key=scores.get)
    before = load_checkpoint(best_path(run))["models"]["G"]
    best_path(run).unlink()  # removed by hand: the log still knows which was best
    train(cfg, run)  # resumes the complete run: nothing to train, best.pt is written again
    kept = read_best(run, 4)
    assert kept is not None
    assert kept["step"] == best_step and kept["val_score"] == scores[best_step]
    after = load_checkpoint(best_path(run))["models"]["G"]
    assert all(torch.equal(before[k], after[k]) for k in before)
    # when the log's best has no checkpoint left, the choice starts again (said in the log)
    log = run / "metrics.jsonl"
    records = [json.loads(line) for line in log.read_text().splitlines()]
    for r in records:
        if r["step"] == 2:
            r["val_score"] = 0.0  # make iteration 2 the logged best ...
    log.write_text("".join(json.dumps(r) + "\n" for r in records))
    checkpoint_path(run, 2).unlink()  # ... whose checkpoint is gone
    best_path(run).unlink()
    with caplog.at_level(logging.WARNING):
        train(cfg, run)
    assert read_best(run, 4) is None and "has no checkpoint left" in caplog.text


def test_make_demo_refuses_to_resume_a_run_of_another_recipe(tmp_path):
    from hagan import demo_job
    from hagan.config import save_json
    from hagan.errors import RunError

    cfg = preset("demo32")
    run = tmp_path / "run_demo32"
    run.mkdir()
    demo_job._refuse_other_recipe(run, cfg)  # no run yet
    save_json(cfg.replace(diversity_every=500, iterations=10), run / "config.json")
    demo_job._refuse_other_recipe(run, cfg)  # notebook 03's logging settings: the same recipe
    save_json(cfg.replace(r1_gamma=0.3), run / "config.json")  # an earlier demo32
    with pytest.raises(RunError, match="r1_gamma=0.3"):
        demo_job._refuse_other_recipe(run, cfg)
