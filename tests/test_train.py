"""Training: the iteration, over-fitting, exact resume, precision, NaN guard, signals, DDP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from helpers import REPO, make_random_dataset, run_cli

from hagan import checkpoint as ckpt
from hagan.config import preset
from hagan.errors import ConfigError
from hagan.train import NonFiniteLossError, Trainer, read_metrics, train
from hagan.upsample import UpsampleConv3d


def tiny(data, **kw):
    base = dict(iterations=6, batch_size=2, log_every=1, checkpoint_every=3, image_every=0,
                tensorboard=False, progress=False, data=str(data))
    return preset("tiny32", **{**base, **kw})


@pytest.fixture
def data(tmp_path):
    return make_random_dataset(tmp_path / "data", n=6, size=32)


def test_step_updates_every_network_and_only_it(data, tmp_path):
    tr = Trainer(tiny(data), tmp_path / "run", resume=False)
    before = {k: [p.detach().clone() for p in n.parameters()] for k, n in tr.nets.items()}
    x = torch.rand(2, 1, 32, 32, 32) * 2 - 1
    losses = tr.step(x)
    assert set(losses) == {"loss_d", "loss_d_real", "loss_d_fake", "loss_g", "loss_e",
                           "loss_sube"}
    assert all(torch.isfinite(v) for v in losses.values())
    for name, net in tr.nets.items():
        changed = any(not torch.equal(a, b) for a, b in zip(before[name], net.parameters()))
        assert changed, f"{name} was not updated"
    # each phase freezes the others; after the last phase (Sub-E) nothing stays trainable
    assert not any(p.requires_grad for p in tr.SubE.parameters())


def test_slab_start_range_and_alignment(data, tmp_path):
    tr = Trainer(tiny(data), tmp_path / "run", resume=False)
    starts = {tr.draw_slab_start() for _ in range(500)}
    assert min(starts) == 0 and max(starts) == 28  # 7S/8 for S=32, both ends reachable
    tr = Trainer(tiny(data, align_slabs=True), tmp_path / "run2", resume=False)
    starts = {tr.draw_slab_start() for _ in range(300)}
    assert all(s % 4 == 0 for s in starts) and max(starts) == 28


@pytest.mark.slow  # 60 iterations: about a minute and a half on 2 CPU cores
def test_overfit_one_volume_reduces_reconstruction_losses(tmp_path):
    data = make_random_dataset(tmp_path / "one", n=1, size=32)
    cfg = tiny(data, iterations=60, batch_size=1, lr_e=2e-3, checkpoint_every=1000)
    result = train(cfg, tmp_path / "run")
    log = read_metrics(tmp_path / "run")
    first = sum(r["loss_e"] for r in log[:5]) / 5
    last = sum(r["loss_e"] for r in log[-5:]) / 5
    assert last < 0.8 * first, (first, last)
    first_s = sum(r["loss_sube"] for r in log[:5]) / 5
    last_s = sum(r["loss_sube"] for r in log[-5:]) / 5
    assert last_s < first_s, (first_s, last_s)
    assert result.step == 60


@pytest.mark.slow  # over 10 s on 2 CPU cores
def test_resume_is_exact(data, tmp_path):
    full = train(tiny(data), tmp_path / "full")
    train(tiny(data, iterations=3), tmp_path / "split")
    resumed = train(tiny(data), tmp_path / "split")  # continues from iteration 3
    assert full.step == resumed.step == 6
    log_full, log_split = read_metrics(tmp_path / "full"), read_metrics(tmp_path / "split")
    keys = ["step", "loss_d", "loss_g", "loss_e", "loss_sube"]
    assert [[r[k] for k in keys] for r in log_full] == [[r[k] for k in keys] for r in log_split]
    a = ckpt.load_checkpoint(full.checkpoint)["models"]
    b = ckpt.load_checkpoint(resumed.checkpoint)["models"]
    for net in a:
        for k in a[net]:
            assert torch.equal(a[net][k], b[net][k]), f"{net}.{k} differs after resume"


@pytest.mark.slow  # over 10 s on 2 CPU cores
def test_keeps_last_k_checkpoints(data, tmp_path):
    train(tiny(data, iterations=8, checkpoint_every=2, keep_checkpoints=2), tmp_path / "run")
    names = [p.name for p in ckpt.list_checkpoints(tmp_path / "run")]
    assert names == ["ckpt_00000006.pt", "ckpt_00000008.pt"]


def test_same_seed_same_losses(data, tmp_path):
    a = train(tiny(data, iterations=3), tmp_path / "a").losses
    b = train(tiny(data, iterations=3), tmp_path / "b").losses
    assert a == b


@pytest.mark.slow  # bf16 on a CPU without bf16 units: about a minute on 2 cores
def test_bf16_run_stays_in_fp32_loss_range(data, tmp_path):
    fp32 = read_metrics(train(tiny(data, iterations=12), tmp_path / "fp32").run_dir)
    bf16 = read_metrics(train(tiny(data, iterations=12, precision="bf16"),
                              tmp_path / "bf16").run_dir)
    for key in ("loss_d", "loss_g", "loss_e", "loss_sube"):
        a = sum(r[key] for r in fp32[-4:]) / 4
        b = sum(r[key] for r in bf16[-4:]) / 4
        assert abs(a - b) < 0.25 * max(abs(a), 0.2), (key, a, b)


def test_channels_last_step_matches_default_layout(data, tmp_path):
    x = torch.rand(2, 1, 32, 32, 32) * 2 - 1
    a = Trainer(tiny(data), tmp_path / "a", resume=False).step(x)
    b = Trainer(tiny(data, channels_last=True), tmp_path / "b", resume=False).step(
        x.contiguous(memory_format=torch.channels_last_3d))
    for k in a:
        assert abs(a[k].item() - b[k].item()) < 1e-4, (k, a[k].item(), b[k].item())


def test_encode_slabs_is_e_on_each_slab_joined_along_depth(data, tmp_path):
    tr = Trainer(tiny(data), tmp_path / "run", resume=False)
    x = torch.rand(2, 1, 32, 32, 32) * 2 - 1
    with torch.no_grad():
        feats = tr.encode_slabs(x)
        one_by_one = torch.cat([tr.E(x[:, :, a:a + 4]) for a in range(0, 32, 4)], dim=2)
    assert feats.shape == (2, tr.E.blocks[-1].conv.out_channels, 8, 8, 8)
    torch.testing.assert_close(feats, one_by_one)


def test_fp16_on_cpu_is_a_clear_error(data, tmp_path):
    with pytest.raises(ConfigError, match="precision=fp16: expected a CUDA GPU, found the CPU"):
        train(tiny(data, precision="fp16", device="cpu"), tmp_path / "run")


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(data, tmp_path, monkeypatch):
    # Datasets with NaN are refused at start, so the loss guard is triggered another way: right
    # after the checkpoint of iteration 2 is written, one weight of G^A becomes infinite, as
    # after a diverging update. The next iteration's losses are NaN; the guard must stop there.
    save = Trainer.save

    def save_then_diverge(self):
        path = save(self)
        if self.step_num == 2:
            with torch.no_grad():
                next(self.nets["G"].parameters()).view(-1)[0] = float("inf")
        return path

    monkeypatch.setattr(Trainer, "save", save_then_diverge)
    cfg = tiny(data, iterations=6, batch_size=1, checkpoint_every=1)
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss at iteration 3 .*last good "
                                                 r"checkpoint is .*ckpt_"):
        train(cfg, tmp_path / "run")
    path, state = ckpt.latest_checkpoint(tmp_path / "run")
    assert state["step"] == 2  # nothing was saved from the diverged iteration
    for sd in state["models"].values():
        assert all(torch.isfinite(t).all() for t in sd.values() if t.is_floating_point())


def test_conditional_training_runs(tmp_path):
    data = make_random_dataset(tmp_path / "data", n=4, size=32, labels=["a", "b"])
    result = train(tiny(data, num_classes=2, iterations=2), tmp_path / "run")
    assert result.step == 2 and all(v == v for v in result.losses.values())


def test_cli_errors_are_one_line(tmp_path, capsys):
    from hagan.cli import main

    data = make_random_dataset(tmp_path / "data", n=2, size=32)
    cases = [
        (["train", "--preset", "nope", "--data", str(data), "--out", str(tmp_path / "r")],
         "preset: expected one of"),
        (["train", "--data", str(data), "--out", str(tmp_path / "r"), "--set", "bogus=1"],
         "config key: expected a Config field .*found 'bogus'"),
        (["train", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "r")],
         "does not exist"),
        (["train", "--preset", "small64", "--data", str(data), "--out", str(tmp_path / "r")],
         "expects 64\\^3 volumes"),
        (["train", "--data", str(data), "--out", str(tmp_path / "r"), "--set", "batch_size=0"],
         "batch_size: expected a value > 0, found 0"),
        (["train", "--out", str(tmp_path / "r")], "--data: expected a prepared dataset folder"),
        (["generate", str(tmp_path / "nothing.pt"), "--out", str(tmp_path / "g")],
         "does not exist"),
    ]
    import re

    for args, message in cases:
        code = main(args)
        err = capsys.readouterr().err
        assert code != 0, args
        assert re.search(message, err), (args, err)
        assert len(err.strip().splitlines()) == 1, err
    # and once through a real process: one line on stderr, no traceback
    proc = run_cli("train", "--preset", "nope", "--data", str(data), "--out", str(tmp_path / "r"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == "hagan train: error: preset: expected one of paper256, " \
                                  "paper128, small64, tiny32, demo32, found 'nope'."


@pytest.mark.slow
def test_cli_train_generate_and_sigterm(tmp_path):
    data = make_random_dataset(tmp_path / "data", n=4, size=32)
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "hagan", "train", "--data", str(data), "--out", str(run),
           "--set", "iterations=100000", "--set", "checkpoint_every=100000",
           "--set", "progress=False", "--set", "log_every=1", "--set", "image_every=0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            encoding="utf-8", errors="replace", cwd=REPO)
    deadline = time.time() + 600  # the first log line means the signal handlers are installed
    while time.time() < deadline and not (run / "metrics.jsonl").exists() and proc.poll() is None:
        time.sleep(0.2)
    assert (run / "metrics.jsonl").exists(), proc.communicate()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 128 + signal.SIGTERM, (out, err)
    assert "stopped by SIGTERM" in out and "checkpoint saved" in out
    path, state = ckpt.latest_checkpoint(run)
    assert state["step"] >= 1

    gen = run_cli("generate", str(run), "--n", "2", "--out", str(tmp_path / "samples"),
                  check=True)
    assert "wrote 2 volume(s)" in gen.stdout
    before = {p.name: p.read_bytes() for p in (tmp_path / "samples").glob("*.nii.gz")}
    again = run_cli("generate", str(run), "--n", "2", "--out", str(tmp_path / "samples"))
    assert again.returncode == 0  # the same request again: complete already, nothing rewritten
    assert {p.name: p.read_bytes() for p in (tmp_path / "samples").glob("*.nii.gz")} == before
    other = run_cli("generate", str(run), "--n", "2", "--seed", "1", "--out",
                    str(tmp_path / "samples"))
    assert other.returncode != 0 and "Traceback" not in other.stderr  # another request: refused


DDP_SCRIPT = r"""
import hashlib, json, os, sys, torch
from hagan.config import preset
from hagan.train import Trainer
data, out = sys.argv[1], sys.argv[2]
cfg = preset("tiny32", iterations=3, batch_size=1, log_every=1, checkpoint_every=100,
             image_every=0, tensorboard=False, progress=False, data=data, device="cpu")
tr = Trainer(cfg, out, resume=False)
tr.train()
h = hashlib.sha256()
for name in ("G", "D", "E", "SubE"):
    for k, v in sorted(tr.nets[name].state_dict().items()):
        h.update(k.encode()); h.update(v.detach().cpu().numpy().tobytes())
with open(os.path.join(out, f"rank{tr.rank}.json"), "w") as fh:
    json.dump({"rank": tr.rank, "world": tr.world, "hash": h.hexdigest()}, fh)
"""


@pytest.mark.slow
def test_ddp_two_processes_keep_replicas_identical(tmp_path):
    data = make_random_dataset(tmp_path / "data", n=4, size=32)
    script = tmp_path / "ddp_train.py"
    script.write_text(DDP_SCRIPT)
    out = tmp_path / "run"
    out.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(script), str(data), str(out)]
    proc = subprocess.run(cmd, capture_output=True, encoding="utf-8", errors="replace",
                          timeout=300, env=env, cwd=REPO)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout}\n{proc.stderr}"
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2]
    assert ranks[0]["hash"] == ranks[1]["hash"]
    assert ckpt.latest_checkpoint(out)[1]["step"] == 3


@pytest.mark.slow  # over 10 s on 2 CPU cores
def test_cached_upsample_kernels_give_the_plain_iteration(data, tmp_path):
    """G's upsampling kernels, transformed once per update, give the same iteration as
    transforming them in every pass: the same losses and the same gradients for all four
    networks. That includes E^H and E^G, which run after G's update and so would see stale
    kernels if the layers missed the update (fused Adam does not bump version counters)."""
    torch.manual_seed(0)
    x = torch.rand(2, 1, 32, 32, 32) * 2 - 1
    cached = Trainer(tiny(data), tmp_path / "cached", resume=False)
    plain = Trainer(tiny(data), tmp_path / "plain", resume=False)
    assert all(m.cache_kernels for m in cached.G.modules() if isinstance(m, UpsampleConv3d))
    plain.G.cache_upsample_kernels(False)
    grads = {}
    for tr in (cached, plain):
        grads[tr] = {}
        for name, opt in tr.opt.items():
            def record(o, args, kwargs, name=name, store=grads[tr]):  # noqa: ARG001
                store[name] = [p.grad.clone() for g in o.param_groups for p in g["params"]]
            opt.register_step_pre_hook(record)
    a, b = cached.step(x), plain.step(x)
    for k in a:
        assert abs(a[k].item() - b[k].item()) < 1e-6, (k, a[k].item(), b[k].item())
    for name in ("D", "G", "E", "SubE"):
        for g_cached, g_plain in zip(grads[cached][name], grads[plain][name], strict=True):
            torch.testing.assert_close(g_cached, g_plain, rtol=1e-4, atol=1e-6)


def test_trainer_gives_each_network_its_own_fused_adam_with_the_config_settings(data, tmp_path):
    """One fused Adam per network (the trainer's choice on CPU and CUDA), holding exactly that
    network's parameters, with the configured learning rate (G: lr_g, D: lr_d, both encoders:
    lr_e) and betas. Whether fused and for-each Adam agree is PyTorch's business, not tested."""
    cfg = tiny(data, lr_g=1e-3, lr_d=2e-3, lr_e=3e-3, beta1=0.5, beta2=0.9)
    tr = Trainer(cfg, tmp_path / "run", resume=False)
    nets = {"G": tr.G, "D": tr.D, "E": tr.E, "SubE": tr.SubE}
    lrs = {"G": 1e-3, "D": 2e-3, "E": 3e-3, "SubE": 3e-3}
    assert set(tr.opt) == set(nets)
    for name, opt in tr.opt.items():
        (group,) = opt.param_groups
        assert group["fused"] and group["lr"] == lrs[name] and group["betas"] == (0.5, 0.9)
        assert {id(p) for p in group["params"]} == {id(p) for p in nets[name].parameters()}


# --- run-folder and CLI guards (a new user's mistakes) -------------------------------------------
FAST = ["--set", "progress=False", "tensorboard=False", "image_every=0", "log_every=1",
        "batch_size=2", "checkpoint_every=2"]


def _files(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_train_refuses_an_out_inside_a_prepared_dataset(tmp_path, capsys):
    from hagan.cli import main

    data = make_random_dataset(tmp_path / "data", n=2, size=32)
    before = _files(data)
    for out in (data / "volumes", data / "volumes" / "run"):
        assert main(["train", "--data", str(data), "--out", str(out), *FAST,
                     "--set", "iterations=1"]) == 2
        assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert _files(data) == before


def test_train_refuses_a_folder_of_user_files_unless_fresh(tmp_path, capsys):
    from hagan.cli import main

    data = make_random_dataset(tmp_path / "data", n=2, size=32)
    out = tmp_path / "mine"
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "keep.txt").write_text("mine")
    (out / "config.json").write_text('{"lr": 3}')
    before = _files(out)
    args = ["train", "--data", str(data), "--out", str(out), *FAST, "--set", "iterations=1"]
    assert main(args) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert _files(out) == before
    assert main([*args, "--fresh"]) == 0  # explicit: the user's files are moved, not deleted
    moved = [p for p in out.iterdir() if p.name.startswith("previous-")]
    assert len(moved) == 1 and (moved[0] / "checkpoints" / "keep.txt").read_text() == "mine"


def test_train_refuses_set_preset_and_a_second_data_folder(tmp_path, capsys):
    from hagan.cli import main

    data = make_random_dataset(tmp_path / "data", n=2, size=32)
    other = make_random_dataset(tmp_path / "other", n=2, size=32)
    run = tmp_path / "run"
    for extra in (["--set", "preset=paper256"], ["--set", f"data={other}"]):
        assert main(["train", "--data", str(data), "--out", str(run), *FAST,
                     "--set", "iterations=1", *extra]) == 2, extra
        assert len(capsys.readouterr().err.strip().splitlines()) == 1
        assert not run.exists()
    # the same folder twice is not a conflict
    assert main(["train", "--data", str(data), "--out", str(run), *FAST,
                 "--set", "iterations=1", f"data={data}"]) == 0


def test_resume_refuses_a_new_seed_and_says_when_there_is_nothing_to_do(tmp_path, capsys):
    from hagan.cli import main

    data = make_random_dataset(tmp_path / "data", n=2, size=32)
    run = tmp_path / "run"
    args = ["train", "--data", str(data), "--out", str(run), *FAST, "--set", "iterations=2"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "losses at step 2" in out and "\nlosses: \n" not in out
    before = _files(run)
    assert main([*args, "seed=5"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "seed" in err and "--fresh" in err
    assert main([*args, "num_classes=2"]) == 2
    assert "--fresh" in capsys.readouterr().err
    assert main(args) == 0  # already at step 2
    out = capsys.readouterr().out
    assert "already at step 2" in out and "losses" not in out
    assert _files(run) == before


def test_labels_are_shown_as_a_name_to_index_map(tmp_path, capsys, caplog):
    import logging

    from hagan.cli import main

    data = make_random_dataset(tmp_path / "data", n=4, size=32, labels=["lung", "brain"])
    with caplog.at_level(logging.INFO, logger="hagan.train"):
        assert main(["train", "--data", str(data), "--out", str(tmp_path / "u"), *FAST,
                     "--set", "iterations=1"]) == 0
    assert "num_classes=2" in caplog.text  # the hint for a conditional model
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "c"), *FAST,
                 "--set", "iterations=1", "num_classes=2"]) == 0
    capsys.readouterr()
    assert main(["generate", str(tmp_path / "c"), "--n", "1", "--label", "5",
                 "--out", str(tmp_path / "g")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "brain=0, lung=1" in err
