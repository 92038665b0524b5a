"""Benchmarks: `hagan bench` and benchmarks/profile_step.py measure what they say they measure."""

from __future__ import annotations

import json
import runpy

import pytest
import torch
from helpers import REPO

from hagan import bench


def test_time_calls_times_each_call_after_the_warmup():
    calls = []
    times = bench.time_calls(lambda: calls.append(1), torch.device("cpu"), iters=3, warmup=2)
    assert len(calls) == 5 and len(times) == 3 and all(t >= 0 for t in times)
    assert bench.measured_peak_tflops(torch.device("cpu"), iters=1) > 0


def test_bench_train_reports_the_median_time_flops_and_fraction_of_peak(monkeypatch):
    """The FLOP count is real (one Trainer.step under FlopCounterMode); the timings and the
    matmul peak are fixed here, so no assertion depends on the machine's speed or rounding."""
    monkeypatch.setattr(bench, "time_calls", lambda fn, device, iters, warmup: [3.0, 1.0, 2.0])
    monkeypatch.setattr(bench, "measured_peak_tflops", lambda device, precision: 0.5)
    res = bench.bench_train("tiny32", batch_size=1, device="cpu", iters=3, warmup=1)
    assert (res["mode"], res["preset"], res["batch_size"], res["device"]) == \
        ("train", "tiny32", 1, "cpu")
    assert res["iters"] == 3 and res["s_per_iter"] == 2.0  # the median
    assert 1e8 < res["flops_per_iter"] < 1e11  # tiny32: about 0.9 GFLOPs per iteration
    assert res["tflops"] == res["flops_per_iter"] / 2.0 / 1e12
    assert res["matmul_peak_tflops"] == 0.5 and res["fraction_of_peak"] == res["tflops"] / 0.5
    table = bench.format_result(res).splitlines()
    assert table[0] == "hagan bench: one training iteration, preset tiny32, batch size 1, cpu, fp32"
    assert table[1].split() == ["time", "per", "iteration", "2", "s", "(median", "of", "3)"]
    assert "of this machine's matmul peak (0.5 TFLOP/s)" in table[3]


def test_bench_cli_prints_a_table_and_json_on_request(capsys):
    from hagan.cli import main

    argv = ["bench", "--mode", "generate", "--iters", "1", "--warmup", "0", "--no-flops",
            "--device", "cpu"]
    assert main(argv) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[0].startswith("hagan bench: generate one volume, preset tiny32, batch size 1")
    assert out[1].lstrip().startswith("time per volume") and "median of 1" in out[1]
    assert main(argv + ["--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert (res["mode"], res["batch_size"], res["chunk"], res["flops_per_iter"]) == \
        ("generate", 1, 16, None)


def test_bench_generate_slab_wise_costs_about_the_flops_of_one_pass(monkeypatch):
    monkeypatch.setattr(bench, "measured_peak_tflops", lambda device, precision: 0.5)
    chunked = bench.bench_generate("tiny32", device="cpu", iters=1, warmup=0)
    one_pass = bench.bench_generate("tiny32", device="cpu", iters=1, warmup=0, chunk=None)
    assert chunked["chunk"] == 16 and one_pass["chunk"] is None
    # slab-wise generation recomputes nothing but the one-slice halos: at most a few % more
    assert one_pass["flops_per_iter"] <= chunked["flops_per_iter"] <= 1.3 * one_pass[
        "flops_per_iter"]


def test_train_step_exposes_its_trainer(tmp_path):
    step, device = bench.train_step("tiny32", 1, str(tmp_path / "run"), device="cpu")
    losses = step()
    assert set(losses) >= {"loss_d", "loss_g"} and device.type == "cpu"
    assert step.trainer.step_num == 0  # Trainer.step alone does not count or save
    assert not (tmp_path / "run").exists()


@pytest.mark.slow  # profiles several iterations: over 10 s on 2 CPU cores
def test_profile_step_splits_the_iteration_into_phases_and_lists_operators(tmp_path, capsys):
    profile_main = runpy.run_path(str(REPO / "benchmarks" / "profile_step.py"))["main"]
    trace = tmp_path / "trace.json"
    assert profile_main(["--preset", "tiny32", "--batch-size", "1", "--iters", "2", "--top", "5",
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
