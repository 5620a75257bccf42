"""Adapters that plug ioattn into other libraries:

  ioattn.integrations.huggingface.register()   attn_implementation="ioattn" in transformers
  ioattn.integrations.flash_attn_shim.install() `import flash_attn` resolves to ioattn (code written
                                                against flash-attn 2, e.g. the YOLOv12 authors' code)
  ioattn.integrations.ultralytics.install()     Ultralytics' YOLO12 area attention (AAttn) runs on
                                                ioattn (PyPI's ultralytics never imports flash_attn)
"""
