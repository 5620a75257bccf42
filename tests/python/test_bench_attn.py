"""bench/gpu/bench_attn.py's merge of several rounds (--rounds): the numbers the peer tables report."""
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "bench", "gpu"))
import bench_attn  # noqa: E402

FLOPS = 1e12  # forward FLOPs of the shape: 1 ms -> 1000 TFLOP/s


def rec(fwd, bwd, **extra):
    return {"fwd_ms": fwd, "bwd_ms": bwd, "fwd_tflops": FLOPS / fwd / 1e9, "bwd_tflops": 2.5 * FLOPS / bwd / 1e9,
            **extra}


def test_one_round_is_passed_through():
    r = {"flash": rec(2.0, 4.0)}
    assert bench_attn.merge_rounds([r], FLOPS) is r


def test_medians_spread_and_first_round_fields():
    rounds = [{"ioattn": rec(1.0, 2.0, choice="sm90", peak_extra_bytes=7)},
              {"ioattn": rec(1.5, 2.2, choice="other", peak_extra_bytes=None)},
              {"ioattn": rec(1.2, 2.6, choice="other", peak_extra_bytes=None)}]
    m = bench_attn.merge_rounds(rounds, FLOPS)["ioattn"]
    assert m["fwd_ms"] == 1.2 and m["bwd_ms"] == 2.2
    assert m["fwd_tflops"] == pytest.approx(FLOPS / 1.2 / 1e9)
    assert m["bwd_tflops"] == pytest.approx(2.5 * FLOPS / 2.2 / 1e9)
    assert m["spread"]["fwd_ms"] == pytest.approx(0.5 / 1.2)
    assert m["spread"]["bwd_ms"] == pytest.approx(0.6 / 2.2)
    assert m["choice"] == "sm90" and m["peak_extra_bytes"] == 7  # the first round's record
    assert [x["fwd_ms"] for x in m["rounds"]] == [1.0, 1.5, 1.2]
    assert rounds[0]["ioattn"]["fwd_ms"] == 1.0  # the rounds themselves are left alone


def test_failures_are_not_averaged_away():
    ok = {"flash": rec(2.0, 4.0), "cudnn": {"error": "unsupported"}}
    bad = {"flash": {"error": "OOM"}, "cudnn": {"error": "unsupported"}}
    m = bench_attn.merge_rounds([ok, bad], FLOPS)
    assert m["flash"] == {"error": "failed in a later round"}
    assert m["cudnn"] == {"error": "unsupported"}
    m = bench_attn.merge_rounds([bad, ok], FLOPS)
    assert m["flash"] == {"error": "OOM"}
