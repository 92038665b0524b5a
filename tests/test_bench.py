"""Benchmarks: `hagan bench` and benchmarks/profile_step.py measure what they say they measure."""

from __future__ import annotations

import json
import runpy

import pytest
from helpers import REPO

from hagan import bench


def test_bench_train_reports_time_flops_and_fraction_of_peak():
    res = bench.bench_train("tiny32", batch=1, iters=2, warmup=1)
    assert res["mode"] == "train" and res["preset"] == "tiny32" and res["iters"] == 2
    assert 0 < res["s_per_iter"] < 30
    assert 1e8 < res["flops_per_iter"] < 1e11  # tiny32: about 0.9 GFLOPs per iteration
    assert res["tflops"] == pytest.approx(res["flops_per_iter"] / res["s_per_iter"] / 1e12,
                                          rel=0.01)
    assert 0 < res["fraction_of_peak"] == pytest.approx(
        res["tflops"] / res["matmul_peak_tflops"], rel=0.02)


def test_bench_generate_slab_wise_costs_about_the_flops_of_one_pass():
    chunked = bench.bench_generate("tiny32", iters=1, warmup=0)
    one_pass = bench.bench_generate("tiny32", iters=1, warmup=0, chunk=None)
    assert chunked["chunk"] == 16 and one_pass["chunk"] is None
    # slab-wise generation recomputes nothing but the one-slice halos: at most a few % more
    assert one_pass["flops_per_iter"] <= chunked["flops_per_iter"] <= 1.3 * one_pass[
        "flops_per_iter"]


def test_train_step_exposes_its_trainer(tmp_path):
    step, device = bench.train_step("tiny32", 1, str(tmp_path / "run"))
    losses = step()
    assert set(losses) >= {"loss_d", "loss_g"} and device.type == "cpu"
    assert step.trainer.step_num == 0  # Trainer.step alone does not count or save
    assert not (tmp_path / "run").exists()


def test_profile_step_splits_the_iteration_into_phases_and_lists_operators(tmp_path, capsys):
    profile_main = runpy.run_path(str(REPO / "benchmarks" / "profile_step.py"))["main"]
    trace = tmp_path / "trace.json"
    assert profile_main(["--preset", "tiny32", "--batch", "1", "--iters", "2", "--top", "5",
                         "--trace", str(trace)]) == 0
    out = capsys.readouterr()
    lines = [json.loads(line) for line in out.out.splitlines() if line.startswith("{")]
    phases = [r for r in lines if "phase" in r]
    assert [r["phase"] for r in phases] == ["D", "G", "E", "SubE"]
    assert all(r["ms"] > 0 and r["iters"] == 2 for r in phases)
    assert sum(r["share"] for r in phases) == pytest.approx(1.0, abs=0.01)
    ops = [r for r in lines if "op" in r]
    assert len(ops) == 5 and ops[0]["self_ms"] >= ops[-1]["self_ms"] > 0
    assert any("conv" in r["op"] for r in ops)  # a 3D conv net spends its time in convolutions
    assert trace.stat().st_size > 1000 and json.loads(trace.read_text())["traceEvents"]

    before = trace.read_bytes()
    with pytest.raises(SystemExit) as refused:
        profile_main(["--preset", "tiny32", "--trace", str(trace)])
    assert refused.value.code == 2 and "exists" in capsys.readouterr().err
    assert trace.read_bytes() == before
