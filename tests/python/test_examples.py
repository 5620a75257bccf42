"""The training examples (examples/vit/train_vit.py, examples/gpt/train_gpt.py) run end to end on
the CPU at tiny sizes: both backends train from the same weights on the same batches, so in float32
their loss curves agree to rounding, and the JSON (and the plot, when matplotlib is installed) is written."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TINY = ["--device", "cpu", "--steps", "10", "--batch", "2", "--dim", "32", "--depth", "1", "--heads", "2"]
EXAMPLES = {
    "vit": ["examples/vit/train_vit.py", "--seqlen", "16", "--patch", "4", "--classes", "5", "--noise", "0.5",
            "--batch", "8"],
    "gpt": ["examples/gpt/train_gpt.py", "--seqlen", "40", "--kv-heads", "1", "--vocab", "64"],
}


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_example_backends_match(name, tmp_path):
    script, *extra = EXAMPLES[name]
    png, js = tmp_path / "loss.png", tmp_path / "results.json"
    # One OpenMP thread: at these sizes more threads only add overhead, and the suite may share the cores.
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(ROOT / script), *TINY, *extra, "--out", str(png), "--json", str(js)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ms/step" in proc.stdout and "ioattn" in proc.stdout and "sdpa" in proc.stdout
    rec = json.loads(js.read_text())
    ours, ref = (rec["backends"][b]["losses"] for b in ("ioattn", "sdpa"))
    assert len(ours) == len(ref) == 10
    assert all(abs(x) < 1e3 for x in ours)
    assert sum(ours[-3:]) < sum(ours[:3])  # it trains
    assert rec["max_rel_loss_diff"] < 1e-4, rec["max_rel_loss_diff"]
    assert max(abs(a - b) for a, b in zip(ours, ref)) == pytest.approx(rec["max_abs_loss_diff"])
    for b in ("ioattn", "sdpa"):
        assert rec["backends"][b]["median_ms_per_step"] > 0 and rec["backends"][b]["peak_bytes"] >= 0
    assert png.exists() == (importlib.util.find_spec("matplotlib") is not None)


def test_example_control_and_profile(tmp_path):
    """--control adds SDPA's math backend as a third run (its drift from sdpa is reported next to
    ioattn's) and --profile prints a profiler table per backend."""
    script, *extra = EXAMPLES["gpt"]
    js = tmp_path / "results.json"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(ROOT / script), *TINY, *extra, "--steps", "4", "--control", "--profile",
                           "--out", str(tmp_path / "loss.png"), "--json", str(js)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rec = json.loads(js.read_text())
    assert set(rec["backends"]) == {"ioattn", "sdpa", "sdpa-math"}
    ctrl, ref = rec["backends"]["sdpa-math"]["losses"], rec["backends"]["sdpa"]["losses"]
    assert len(ctrl) == 4  # the profiled steps are not in the curves
    assert max(abs(a - b) for a, b in zip(ctrl, ref)) == pytest.approx(rec["control_max_abs_loss_diff"])
    assert rec["control_max_rel_loss_diff"] < 1e-4  # float32 on the CPU: rounding only
    assert "control: sdpa-math drifts from sdpa" in proc.stdout
    for b in ("ioattn", "sdpa", "sdpa-math"):
        assert f"profile of 3 steps, {b}:" in proc.stdout
