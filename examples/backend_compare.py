"""Shared harness of the training examples (examples/vit/train_vit.py, examples/gpt/train_gpt.py):
train one model twice, once with ioattn's attention and once with PyTorch's SDPA, from the same
initial weights on the same batches, then print a table (final loss, largest loss difference,
ms/step, peak memory), save the loss curves as a PNG and the numbers as JSON.

Each backend trains in its own spawned process: the peak-memory figures (CUDA's allocator peak, or
the growth of the process's peak RSS on the CPU) then belong to that backend alone, and neither run
inherits the other's allocator caches, compiled graphs or thread pools.

An example supplies three module-level functions (picklable by name for the spawned process):
    build_model(args, backend) -> nn.Module                 # the one place the backend is switched
    make_batch(args, step, generator) -> (inputs, targets)  # CPU tensors, deterministic in (seed, step)
    loss_fn(outputs, targets) -> scalar loss
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import multiprocessing as mp
import resource
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch

BACKENDS = ("ioattn", "sdpa")
# --control: PyTorch SDPA pinned to its MATH backend. In bfloat16 two correct attention kernels round
# differently, and training amplifies the difference step by step; how far sdpa-math drifts from
# sdpa shows how far ioattn may drift from sdpa without being wrong.
CONTROL = "sdpa-math"


def parser(description: str, default_out: Path) -> argparse.ArgumentParser:
    """The flags every example takes. Size flags left at None are filled per device by resolve()."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--steps", type=int, default=300, help="optimizer steps per backend (default 300)")
    ap.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    ap.add_argument("--dtype", default=None, choices=["float32", "bfloat16"],
                    help="compute dtype; default: bfloat16 autocast on cuda, float32 on cpu")
    ap.add_argument("--batch", type=int, default=None, help="batch size")
    ap.add_argument("--seqlen", type=int, default=None, help="tokens per sequence")
    ap.add_argument("--dim", type=int, default=None, help="model width")
    ap.add_argument("--depth", type=int, default=None, help="transformer blocks")
    ap.add_argument("--heads", type=int, default=None, help="attention heads")
    ap.add_argument("--lr", type=float, default=None, help="AdamW learning rate")
    ap.add_argument("--seed", type=int, default=0, help="seed of the initial weights and the data (default 0)")
    ap.add_argument("--warmup", type=int, default=None,
                    help="steps left out of the ms/step median (default: min(10, steps // 4))")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model (both backends)")
    ap.add_argument("--out", type=Path, default=default_out, help=f"loss-curve PNG (default {default_out})")
    ap.add_argument("--json", type=Path, default=None, help="numbers as JSON (default: --out with .json)")
    ap.add_argument("--control", action="store_true",
                    help=f"also train with SDPA's math backend ({CONTROL}): the loss drift between two correct "
                         "kernels, to judge ioattn's drift against")
    ap.add_argument("--profile", action="store_true",
                    help="after training, profile 3 more steps per backend (torch.profiler) and print the "
                         "operators with the most device time (CPU time on the cpu)")
    return ap


def resolve(ap: argparse.ArgumentParser, argv: Optional[List[str]],
            defaults: Dict[str, Dict[str, object]]) -> argparse.Namespace:
    """Parse argv, then fill device, dtype and the size flags left unset from
    defaults = {"cpu": {...}, "cuda": {...}} (also shown in --help)."""
    for action in ap._actions:
        if action.dest in defaults["cpu"]:
            action.help = (f"{action.help or ''} (default: {defaults['cpu'][action.dest]} on cpu, "
                           f"{defaults['cuda'][action.dest]} on cuda)").lstrip()
    args = ap.parse_args(argv)
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    kind = torch.device(args.device).type
    if args.dtype is None:
        args.dtype = "bfloat16" if kind == "cuda" else "float32"
    for key, value in defaults["cuda" if kind == "cuda" else "cpu"].items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    if args.warmup is None:
        args.warmup = min(10, args.steps // 4)
    if args.json is None:
        args.json = args.out.with_suffix(".json")
    return args


def _maxrss_bytes() -> int:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024  # Linux reports KiB, macOS bytes


def train_one(args: argparse.Namespace, backend: str, build_model: Callable, make_batch: Callable,
              loss_fn: Callable) -> Dict[str, object]:
    """Train with one backend; runs in a fresh process. Returns losses, per-step times and memory."""
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    torch.manual_seed(args.seed)  # identical initial weights for both backends
    model = build_model(args, backend).to(device)
    step_model = torch.compile(model) if args.compile else model
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    # Autocast keeps float32 master weights and runs the matmuls and attention in bfloat16.
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if args.dtype == "bfloat16"
                else contextlib.nullcontext())
    gen = torch.Generator().manual_seed(args.seed + 1)  # identical batches for both backends
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    rss_before = _maxrss_bytes()
    losses: List[float] = []
    times: List[float] = []
    # The control trains the sdpa model with SDPA pinned to its math backend.
    pin = contextlib.nullcontext  # a fresh context manager per use
    if backend == CONTROL:
        from torch.nn.attention import SDPBackend, sdpa_kernel
        pin = lambda: sdpa_kernel(SDPBackend.MATH)  # noqa: E731

    def one_step(step: int) -> torch.Tensor:
        inputs, targets = (t.to(device, non_blocking=True) for t in make_batch(args, step, gen))
        sync()
        t0 = time.perf_counter()
        with pin(), autocast:
            loss = loss_fn(step_model(inputs), targets)
        opt.zero_grad(set_to_none=True)
        with pin():
            loss.backward()
        opt.step()
        sync()
        times.append(time.perf_counter() - t0)
        return loss

    for step in range(args.steps):
        losses.append(one_step(step).item())
        if not math.isfinite(losses[-1]):
            raise FloatingPointError(f"{backend}: loss became {losses[-1]} at step {step}")
    profile_table = None
    if args.profile:
        from torch.profiler import ProfilerActivity, profile
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        with profile(activities=acts) as prof:
            for step in range(args.steps, args.steps + 3):
                one_step(step)
        del times[args.steps:]  # the profiled steps stay out of ms/step
        profile_table = prof.key_averages().table(
            sort_by="self_cuda_time_total" if cuda else "self_cpu_time_total", row_limit=15)
    result: Dict[str, object] = {"losses": losses, "step_ms": [t * 1e3 for t in times], "profile": profile_table}
    if cuda:
        result["peak_bytes"] = torch.cuda.max_memory_allocated(device)
        result["peak_kind"] = "torch.cuda.max_memory_allocated"
        result["device_name"] = torch.cuda.get_device_name(device)
    else:
        result["peak_bytes"] = _maxrss_bytes() - rss_before
        result["peak_kind"] = "growth of peak RSS during training (ru_maxrss)"
        result["device_name"] = f"cpu ({torch.get_num_threads()} threads)"
    return result


def _plot(path: Path, title: str, curves: Dict[str, List[float]]) -> Optional[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: no plot (pip install matplotlib)"
    fig, (ax, ax_diff) = plt.subplots(1, 2, figsize=(9, 3.4), dpi=80)
    fig.suptitle(title, fontsize=9)
    for (name, ys), style in zip(curves.items(), ("-", "--", ":")):
        ax.plot(range(1, len(ys) + 1), ys, style, label=name, linewidth=1.2)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.legend()
    ref = curves["sdpa"]
    notes = []
    for (name, ys), color in zip(((n, y) for n, y in curves.items() if n != "sdpa"), ("tab:red", "tab:gray")):
        # Steps where the two losses are bitwise equal have no place on a log axis: count them instead.
        diff = [(i + 1, abs(x - y)) for i, (x, y) in enumerate(zip(ys, ref)) if x != y]
        if diff:
            ax_diff.semilogy(*zip(*diff), ".", color=color, markersize=3, label=f"{name} - sdpa")
        notes.append(f"{name}: {len(ys) - len(diff)} of {len(ys)} equal")
    ax_diff.set_xlabel("step")
    ax_diff.set_ylabel("|loss - loss(sdpa)|")
    ax_diff.legend(fontsize=8)
    ax_diff.set_title("difference (" + "; ".join(notes) + " bitwise)", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return None


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def main(name: str, args: argparse.Namespace, build_model: Callable, make_batch: Callable,
         loss_fn: Callable, config: Dict[str, object]) -> Dict[str, object]:
    """Train with both backends, print the table, write the JSON and the plot; returns the JSON dict."""
    results = {}
    backends = BACKENDS + ((CONTROL,) if args.control else ())
    for backend in backends:
        # A pool of one fresh process per backend; a worker that dies raises BrokenProcessPool here
        # instead of being restarted.
        with ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn")) as pool:
            results[backend] = pool.submit(train_one, args, backend, build_model, make_batch, loss_fn).result()
    ref = results["sdpa"]["losses"]
    drift = {}  # backend -> (max abs, max relative) loss difference from sdpa
    for backend in backends:
        if backend != "sdpa":
            ys = results[backend]["losses"]
            drift[backend] = (max(abs(a - b) for a, b in zip(ys, ref)),
                              max(abs(a - b) / max(abs(b), 1e-12) for a, b in zip(ys, ref)))
    max_abs, max_rel = drift["ioattn"]
    rows = []
    for backend in backends:
        r = results[backend]
        timed = r["step_ms"][args.warmup:] or r["step_ms"]
        r["median_ms_per_step"] = statistics.median(timed)
        r["final_loss"] = r["losses"][-1]
        rows.append((backend, str(args.steps), f"{r['final_loss']:.5f}",
                     f"{drift[backend][0]:.2e}" if backend in drift else "-", f"{r['median_ms_per_step']:.2f}",
                     _mib(r["peak_bytes"])))
    head = ("backend", "steps", "final loss", "max |loss diff|", "ms/step (median)", "peak memory")
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(head)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths))  # noqa: E731
    dev = results["ioattn"]["device_name"]
    print(f"{name}: {config_summary(config)}; device {dev}, {args.dtype}"
          f"{', torch.compile' if args.compile else ''}")
    print(line(head))
    print(line(["-" * w for w in widths]))
    for row in rows:
        print(line(row))
    speedup = results["sdpa"]["median_ms_per_step"] / results["ioattn"]["median_ms_per_step"]
    mem_ratio = results["ioattn"]["peak_bytes"] / max(results["sdpa"]["peak_bytes"], 1)
    if CONTROL in drift:
        print(f"control: {CONTROL} drifts from sdpa by up to {drift[CONTROL][0]:.2e} "
              f"({drift[CONTROL][1]:.2e} relative); ioattn by up to {max_abs:.2e} ({max_rel:.2e})")
    print(f"max relative loss difference {max_rel:.2e}; step time sdpa/ioattn {speedup:.2f} "
          f"(>1: ioattn faster); peak memory ratio ioattn/sdpa {mem_ratio:.2f} ({results['ioattn']['peak_kind']}; "
          f"ms/step is the median after {args.warmup} warm-up steps)")
    record = {
        "example": name, "device": dev, "dtype": args.dtype, "compile": args.compile, "steps": args.steps,
        "warmup_steps": args.warmup, "seed": args.seed, "config": config, "torch": torch.__version__,
        "max_abs_loss_diff": max_abs, "max_rel_loss_diff": max_rel, "sdpa_over_ioattn_time": speedup,
        "ioattn_over_sdpa_peak_memory": mem_ratio,
        "control_max_abs_loss_diff": drift[CONTROL][0] if CONTROL in drift else None,
        "control_max_rel_loss_diff": drift[CONTROL][1] if CONTROL in drift else None,
        "backends": {b: {k: results[b][k] for k in ("final_loss", "median_ms_per_step", "peak_bytes", "peak_kind",
                                                     "losses")} for b in backends},
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(record, indent=1) + "\n")
    note = _plot(args.out, f"{name} on {dev}, {args.dtype}\n{config_summary(config)}",
                 {b: results[b]["losses"] for b in backends})
    for backend in backends:
        if results[backend].get("profile"):
            print(f"profile of 3 steps, {backend}:\n{results[backend]['profile']}")
    print(note or f"wrote {args.out} and {args.json}")
    if note:
        print(f"wrote {args.json}")
    return record


def config_summary(config: Dict[str, object]) -> str:
    return ", ".join(f"{k}={v}" for k, v in config.items())

