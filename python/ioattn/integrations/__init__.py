"""Adapters that plug ioattn into other libraries:

  ioattn.integrations.huggingface.register()   attn_implementation="ioattn" in transformers
  ioattn.integrations.flash_attn_shim.install() `import flash_attn` resolves to ioattn (Ultralytics,
                                                and any code written against flash-attn 2)
"""
