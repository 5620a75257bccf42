"""Ultralytics' YOLO12 on ioattn, with the real `ultralytics` package (pinned and installed by
scripts/ci-python.sh; carried as a wheel to the GPU machine). No network: nothing here downloads weights
or fonts; the model is built from the yolo12n.yaml the package ships.

What the real package does, and so what is tested:
- PyPI's ultralytics (8.3.78, the first release with YOLO12, to 8.4.x) does not import flash_attn: its
  area attention (ultralytics/nn/modules/block.py, AAttn) computes softmax(q^T k / sqrt(d)) with two
  matmuls in every dtype and on every device. Only the YOLOv12 authors' repository (not on PyPI) does
  `from flash_attn.flash_attn_interface import flash_attn_func` and takes it for CUDA tensors, cast to
  half; tests/python/test_cuda.py covers that call pattern through the shim. So installing the flash_attn
  shim before importing ultralytics must leave ultralytics working, and routes nothing by itself
  (test_shim_installed_before_import checks both, and that any flash_attn binding a release might add
  is ioattn's).
- ioattn.integrations.ultralytics.install() puts AAttn's attention on ioattn.flash_attn_func. The tests
  build YOLO12n, run forward and backward with it and with Ultralytics' own forward from the same
  weights, count the ioattn operator calls (one forward and one backward per AAttn module), and hold
  the outputs and parameter gradients to the error rule (tests/python/reference.py) at model level:
  ioattn's error against the same model in float64 (Ultralytics' own forward) is at most twice the
  error of Ultralytics' own forward in the tested precision, plus the rule's slack.
    CPU (CI): float32 training step (each AAttn's output and parameter gradients, the head's outputs,
      all gradients of a smooth objective; and the real detection loss) and inference; tracing (export)
      keeps Ultralytics' forward.
    CUDA: the dtypes Ultralytics runs on a GPU: its AMP training (torch.autocast float16, as its
      trainer does; also the trainer's whole step with the detection loss and GradScaler) and
      half=True inference (the fused model in float16); float32 on CUDA keeps Ultralytics' forward
      (ioattn's CUDA kernels are half precision).

Environment: with IOATTN_REQUIRE_ULTRALYTICS=1 (scripts/ci-python.sh and the GPU script set it) a missing
ultralytics fails these tests; without it they are skipped.
"""
from __future__ import annotations

import copy
import importlib.util
import os
import sys
from types import SimpleNamespace

import pytest
import torch

import ioattn
from ioattn.integrations import flash_attn_shim
from helpers import CountIoattnOps
from reference import check

REQUIRED = os.environ.get("IOATTN_REQUIRE_ULTRALYTICS") == "1"
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(scope="module")
def ul(tmp_path_factory):
    """ultralytics, imported with the flash_attn shim already installed."""
    if "ultralytics" in sys.modules:
        pytest.fail("ultralytics was imported before this module: the shim must be installed first")
    with pytest.MonkeyPatch.context() as mp:
        # Read by ultralytics at import: no online checks or downloads, settings file in a temp dir, quiet.
        mp.setenv("YOLO_OFFLINE", "1")
        mp.setenv("YOLO_CONFIG_DIR", str(tmp_path_factory.mktemp("ultralytics-config")))
        mp.setenv("YOLO_VERBOSE", "False")
        flash_attn_shim.install()
        try:
            try:
                import ultralytics
                from ultralytics.cfg import get_cfg
                from ultralytics.nn.modules import block
                from ultralytics.nn.tasks import DetectionModel
            except ImportError as e:
                if REQUIRED:
                    pytest.fail(f"IOATTN_REQUIRE_ULTRALYTICS=1 but ultralytics cannot be imported: {e!r}")
                pytest.skip(f"ultralytics is not installed ({e})")
            from ioattn.integrations import ultralytics as adapter

            yield SimpleNamespace(version=ultralytics.__version__, block=block, DetectionModel=DetectionModel,
                                  get_cfg=get_cfg, adapter=adapter)
        finally:
            flash_attn_shim.uninstall()


def _yolo12n(ul, device, seed=0):
    torch.manual_seed(seed)
    model = ul.DetectionModel("yolo12n.yaml", verbose=False)
    model.args = ul.get_cfg()  # the trainer's hyperparameters, read by the detection loss
    return model.to(device)


def _calibrate_bn(model, img):
    """Gives every BatchNorm the running statistics of img, as training would: a fresh model in eval mode
    (running mean 0, variance 1) shrinks its activations layer by layer towards zero, which would make
    inference comparisons vacuous."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average: after one batch, exactly that batch's statistics
    with torch.no_grad():
        model.train()(img)
    for m, momentum in zip(bns, momenta):
        m.momentum = momentum
    return model.eval()


def _n_aattn(ul, model):
    return sum(isinstance(m, ul.block.AAttn) for m in model.modules())


def _run(ul, model, img, weights=None, autocast_dtype=None):
    """Runs the model and returns its results by name: each AAttn module's output ("aattn[i]", through
    forward hooks), and, when `weights` is given, in training mode: the head's three feature maps
    ("feats[i]", from the real backbone and neck), the gradients of each AAttn module's parameters
    ("aattn[i].grad": their qkv convolution's gradient comes through the attention's backward) and of
    all parameters ("grads"), for the smooth objective sum_i <feats_i, weights_i> (an objective without
    the loss's discrete target assignment, so that gradients compare across precisions). Without
    `weights`: eval-mode inference, its decoded output as "inference"."""
    res = {}
    aattns = [m for m in model.modules() if isinstance(m, ul.block.AAttn)]
    hooks = [m.register_forward_hook(lambda mod, args, out, i=i: res.__setitem__(f"aattn[{i}]", out.detach()))
             for i, m in enumerate(aattns)]
    try:
        with torch.autocast(img.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            if weights is None:
                with torch.no_grad():
                    res["inference"] = model.eval()(img)[0]
                return res
            feats = model.train()(img)["feats"]
    finally:
        for h in hooks:
            h.remove()
    sum((f.to(w.dtype) * w).sum() for f, w in zip(feats, weights)).backward()
    dtype = weights[0].dtype
    res.update({f"feats[{i}]": f.detach() for i, f in enumerate(feats)})
    res.update({f"aattn[{i}].grad": torch.cat([p.grad.flatten().to(dtype) for p in m.parameters()])
                for i, m in enumerate(aattns)})
    res["grads"] = torch.cat([p.grad.flatten().to(dtype) for p in model.parameters() if p.grad is not None])
    return res


def _run_three(ul, model, img, dtype, train=True, autocast=False):
    """The model run with ioattn, with Ultralytics' own forward, and in float64 (Ultralytics' forward),
    each on a copy of the same weights; in `dtype` through autocast (AMP) or through the weights' dtype.
    Returns the three results and ioattn's operator counts."""
    weights = None
    if train:
        with torch.no_grad():
            shapes = [f.shape for f in copy.deepcopy(model).train()(img)["feats"]]
        gen = torch.Generator().manual_seed(1)
        weights = [torch.randn(s, generator=gen, dtype=torch.float64).to(img.device) for s in shapes]

    def run(float64=False):
        m = copy.deepcopy(model)
        if float64:
            return _run(ul, m.double(), img.double(), weights)
        w = [t.float() for t in weights] if weights is not None else None
        if autocast:
            return _run(ul, m, img, w, autocast_dtype=dtype)
        return _run(ul, m.to(dtype), img.to(dtype), w)

    own, ref64 = run(), run(float64=True)
    ul.adapter.install()
    try:
        with CountIoattnOps() as counter:
            ours = run()
    finally:
        ul.adapter.uninstall()
    return ours, own, ref64, counter.counts


def _check_rule(ours, own, ref64, dtype):
    """The error rule on every named result; prints the errors (max abs against float64)."""
    print(f"\n{'':>14} {'ioattn err':>11} {'own err':>11} {'|float64|':>11}")
    for name, ref in ref64.items():
        assert torch.isfinite(ours[name]).all(), name
        err, base = check(name, ours[name], ref, own[name], dtype)
        print(f"{name:>14} {err:11.3g} {base:11.3g} {ref.abs().max().item():11.3g}")
    if "grads" in ref64:
        norm = ref64["grads"].norm().item()
        print(f"all gradients, relative norm error: ioattn {(ours['grads'] - ref64['grads']).norm().item() / norm:.3g}, "
              f"own {(own['grads'] - ref64['grads']).norm().item() / norm:.3g}")


def test_shim_installed_before_import(ul):
    """With the shim in place ultralytics imports, and whatever flash_attn binding its block module has
    is ioattn's. (The pinned releases have none: their AAttn never imports flash_attn.)"""
    assert importlib.util.find_spec("flash_attn") is not None  # libraries' availability probes work
    from flash_attn.flash_attn_interface import flash_attn_func

    assert flash_attn_func is ioattn.flash_attn_func
    bound = getattr(ul.block, "flash_attn_func", None)
    assert bound is None or bound is ioattn.flash_attn_func, bound
    assert getattr(ul.block, "USE_FLASH_ATTN", True)
    model = _yolo12n(ul, "cpu")
    assert _n_aattn(ul, model) > 0  # YOLO12's area attention is there to be served


def test_yolo12_cpu_float32(ul):
    """CPU float32 training step through ioattn: the head's outputs and every parameter's gradient."""
    model = _yolo12n(ul, "cpu")
    n = _n_aattn(ul, model)
    img = torch.rand(2, 3, 256, 320)  # P4: 4 areas of 80 tokens; P5: 80 tokens
    ours, own, ref64, counts = _run_three(ul, model, img, torch.float32)
    assert counts == {"ioattn.fwd": n, "ioattn.bwd": n}, counts
    _check_rule(ours, own, ref64, torch.float32)
    ours, own, ref64, counts = _run_three(ul, _calibrate_bn(model, img), img, torch.float32, train=False)
    assert counts == {"ioattn.fwd": n}, counts
    _check_rule(ours, own, ref64, torch.float32)


def _detection_batch(device, n_images, size):
    """A batch as Ultralytics' data loader makes it: images, and normalised xywh boxes with classes."""
    gen = torch.Generator().manual_seed(2)
    n_boxes = 2 * n_images
    xy = torch.rand(n_boxes, 2, generator=gen) * 0.6 + 0.2
    wh = torch.rand(n_boxes, 2, generator=gen) * 0.3 + 0.05
    return {"img": torch.rand(n_images, 3, size, size, generator=gen).to(device),
            "batch_idx": torch.arange(n_images).repeat_interleave(2).float(),
            "cls": torch.randint(0, 80, (n_boxes, 1), generator=gen).float(),
            "bboxes": torch.cat([xy, wh], 1)}


def test_yolo12_cpu_loss_step(ul):
    """The real detection loss (target assignment included) backpropagates through ioattn; the loss is
    Ultralytics' own to float32 rounding."""
    model = _yolo12n(ul, "cpu")
    n = _n_aattn(ul, model)
    batch = _detection_batch("cpu", 2, 256)
    own, _ = copy.deepcopy(model).train().loss(batch)
    ul.adapter.install()
    try:
        train = copy.deepcopy(model).train()
        with CountIoattnOps() as counter:
            loss, _ = train.loss(batch)
            loss.sum().backward()
    finally:
        ul.adapter.uninstall()
    assert counter.counts == {"ioattn.fwd": n, "ioattn.bwd": n}, counter.counts
    assert all(torch.isfinite(p.grad).all() for p in train.parameters() if p.grad is not None)
    torch.testing.assert_close(loss, own, rtol=1e-4, atol=1e-5)


def test_tracing_keeps_ultralytics_forward(ul):
    """Export traces the model: the traced graph must hold Ultralytics' matmuls, not ioattn's operator."""
    model = _yolo12n(ul, "cpu").eval()
    aattn = next(m for m in model.modules() if isinstance(m, ul.block.AAttn))
    x = torch.rand(1, aattn.num_heads * aattn.head_dim, 8, 8)
    ul.adapter.install()
    try:
        assert ul.adapter.served(x)
        with torch.no_grad():
            traced = torch.jit.trace(aattn, x)
        assert "ioattn" not in str(traced.graph)
        assert not ul.adapter.served(x.to("meta"))  # devices ioattn does not serve keep Ultralytics' forward
    finally:
        ul.adapter.uninstall()
    assert not ul.adapter.is_installed()


@needs_cuda
def test_yolo12_cuda_amp_fp16(ul):
    """Ultralytics' AMP training on CUDA (torch.autocast float16): forward and backward through ioattn."""
    model = _yolo12n(ul, "cuda")
    n = _n_aattn(ul, model)
    img = torch.rand(4, 3, 640, 640, device="cuda")  # Ultralytics' default size: P4 4 areas of 400 tokens, P5 400
    ours, own, ref64, counts = _run_three(ul, model, img, torch.float16, autocast=True)
    assert counts == {"ioattn.fwd": n, "ioattn.bwd": n}, counts
    _check_rule(ours, own, ref64, torch.float16)


def _amp_first_step(model, batch, device="cuda", max_tries=24):
    """Ultralytics' trainer's AMP step (autocast float16, the detection loss, GradScaler at its default
    initial scale 2**16, unscale, clip to norm 10, step, update), repeated from the same weights until the
    scaler takes a step: an untrained model's scaled float16 gradients overflow at first (with
    Ultralytics' own forward too), and the scaler halves its scale and skips each such step. Returns
    the number of skipped steps, the loss, and the unscaled gradients of the step taken."""
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    scaler = torch.amp.GradScaler(device)
    for skipped in range(max_tries):
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device, dtype=torch.float16):
            loss, _ = model.loss(batch)
        scaler.scale(loss.sum()).backward()
        scaler.unscale_(optimizer)
        grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=10.0)
        scale = scaler.get_scale()
        scaler.step(optimizer)
        scaler.update()
        if scaler.get_scale() >= scale:  # the update halves the scale exactly when the step was skipped
            return skipped, loss.detach(), grads
    raise AssertionError(f"GradScaler skipped {max_tries} steps in a row: the gradients never became finite")


def _loss_and_grads_float64(model, batch):
    model = copy.deepcopy(model).double().train()
    loss, _ = model.loss({**batch, "img": batch["img"].double()})
    loss.sum().backward()
    return loss.detach(), torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


@needs_cuda
def test_yolo12_cuda_amp_loss_step(ul):
    """An AMP training step as Ultralytics' trainer takes it, through ioattn and through Ultralytics' own
    forward: both overflow and skip the same number of steps (one more or less at the boundary), then
    step with finite gradients. The error rule, in norm form, against the float64 loss and gradients:
    ioattn's relative error at most twice that of Ultralytics' own AMP step, plus 1e-3."""
    model = _yolo12n(ul, "cuda").train()
    n = _n_aattn(ul, model)
    batch = _detection_batch("cuda", 4, 640)
    skipped_own, loss_own, grads_own = _amp_first_step(copy.deepcopy(model), batch)
    ul.adapter.install()
    try:
        with CountIoattnOps() as counter:
            skipped, loss, grads = _amp_first_step(copy.deepcopy(model), batch)
    finally:
        ul.adapter.uninstall()
    loss64, grads64 = _loss_and_grads_float64(model, batch)
    tries = skipped + 1
    assert counter.counts == {"ioattn.fwd": n * tries, "ioattn.bwd": n * tries}, counter.counts
    assert torch.isfinite(loss).all() and torch.isfinite(grads).all()
    assert abs(skipped - skipped_own) <= 1, (skipped, skipped_own)

    def rel(a, ref):
        return ((a.double() - ref).norm() / ref.norm()).item()

    print(f"\nAMP step: skipped {skipped} (own {skipped_own}) overflowing steps; loss {loss.sum().item():.5g} "
          f"(own {loss_own.sum().item():.5g}, float64 {loss64.sum().item():.5g}); gradients' relative error "
          f"vs float64: ioattn {rel(grads, grads64):.3g}, own {rel(grads_own, grads64):.3g}")
    assert rel(loss, loss64) <= 2 * rel(loss_own, loss64) + 1e-3
    assert rel(grads, grads64) <= 2 * rel(grads_own, grads64) + 1e-3


@needs_cuda
def test_yolo12_cuda_half_inference(ul):
    """half=True inference as Ultralytics' predictor runs it: the fused model in float16, eval mode."""
    img = torch.rand(2, 3, 640, 640, device="cuda")
    model = _calibrate_bn(_yolo12n(ul, "cuda"), img)
    model.fuse(verbose=False)  # folds BatchNorm into the convolutions, as the predictor does
    n = _n_aattn(ul, model)
    ours, own, ref64, counts = _run_three(ul, model, img, torch.float16, train=False)
    assert counts == {"ioattn.fwd": n}, counts
    _check_rule(ours, own, ref64, torch.float16)


@needs_cuda
def test_yolo12_cuda_float32_keeps_ultralytics_forward(ul):
    """float32 on CUDA is not served (ioattn's CUDA kernels are half precision): Ultralytics' own forward
    runs and no ioattn operator is called."""
    img = torch.rand(1, 3, 320, 320, device="cuda")
    model = _calibrate_bn(_yolo12n(ul, "cuda"), img)
    with torch.no_grad():
        y_own = model(img)[0]
        ul.adapter.install()
        try:
            with CountIoattnOps() as counter:
                y = model(img)[0]
        finally:
            ul.adapter.uninstall()
    assert counter.counts == {}
    torch.testing.assert_close(y, y_own)  # the same computation (cuDNN may pick another algorithm: not bitwise)
