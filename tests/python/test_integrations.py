"""Adapters: transformers' attn_implementation="ioattn", and the flash_attn import shim."""
import sys

import pytest
import torch

import ioattn


def _tiny_llama(attn_implementation, **extra):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                   attn_implementation=attn_implementation, **extra)
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(cfg).eval()


def test_huggingface_attn_implementation():
    from ioattn.integrations import huggingface

    huggingface.register()
    eager = _tiny_llama("eager")
    ours = _tiny_llama("ioattn")
    ours.load_state_dict(eager.state_dict())
    assert ours.config._attn_implementation == "ioattn"
    ids = torch.randint(0, 97, (2, 20))
    # Left padding in the first sequence: exercised through the varlen (unpadded) path.
    mask = torch.ones(2, 20, dtype=torch.long)
    mask[0, :5] = 0
    with torch.no_grad():
        for m in (None, mask):
            a = eager(ids, attention_mask=m).logits
            b = ours(ids, attention_mask=m).logits
            keep = slice(None) if m is None else m.bool()
            assert (a[keep] - b[keep]).abs().max().item() < 1e-4
        # Greedy decoding with a KV cache (one query per step, bottom-right causal).
        ga = eager.generate(ids[:, :8], max_new_tokens=5, do_sample=False, pad_token_id=0)
        gb = ours.generate(ids[:, :8], max_new_tokens=5, do_sample=False, pad_token_id=0)
    assert torch.equal(ga, gb)
    # Training step: gradients match eager's.
    ours.train(), eager.train()
    la = eager(ids, labels=ids).loss
    lb = ours(ids, labels=ids).loss
    ga = torch.autograd.grad(la, eager.model.layers[0].self_attn.q_proj.weight)[0]
    gb = torch.autograd.grad(lb, ours.model.layers[0].self_attn.q_proj.weight)[0]
    assert (ga - gb).abs().max().item() < 1e-4 * max(1.0, ga.abs().max().item())


def test_flash_attn_shim():
    from ioattn.integrations import flash_attn_shim

    had = "flash_attn" in sys.modules
    flash_attn_shim.install()
    try:
        import flash_attn
        from flash_attn import flash_attn_func, flash_attn_varlen_func
        from flash_attn.flash_attn_interface import flash_attn_func as f2, flash_attn_qkvpacked_func

        assert flash_attn_func is ioattn.flash_attn_func and f2 is ioattn.flash_attn_func
        assert flash_attn_varlen_func is ioattn.flash_attn_varlen_func
        assert flash_attn_qkvpacked_func is ioattn.flash_attn_qkvpacked_func
        assert flash_attn.__version__.startswith("2.")
        q = torch.randn(1, 8, 2, 16)
        assert flash_attn_func(q, q, q, causal=True).shape == (1, 8, 2, 16)
    finally:
        flash_attn_shim.uninstall()
    assert ("flash_attn" in sys.modules) == had


def test_huggingface_sliding_window_and_padding():
    transformers = pytest.importorskip("transformers")
    from ioattn.integrations import huggingface

    huggingface.register()
    models = {}
    for impl in ("eager", "ioattn"):
        cfg = transformers.MistralConfig(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=1, sliding_window=6,
                                         max_position_embeddings=128, attn_implementation=impl)
        torch.manual_seed(0)
        models[impl] = transformers.MistralForCausalLM(cfg).eval()
    ids = torch.randint(0, 97, (2, 24))
    mask = torch.ones(2, 24, dtype=torch.long)
    mask[1, :7] = 0
    with torch.no_grad():
        for m in (None, mask):
            a = models["eager"](ids, attention_mask=m).logits
            b = models["ioattn"](ids, attention_mask=m).logits
            keep = slice(None) if m is None else m.bool()
            assert (a[keep] - b[keep]).abs().max().item() < 1e-4
