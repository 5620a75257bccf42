"""Make `import flash_attn` resolve to ioattn.

    import ioattn.integrations.flash_attn_shim as shim
    shim.install()
    from flash_attn import flash_attn_func                           # ioattn's
    from flash_attn.flash_attn_interface import flash_attn_varlen_func  # ioattn's

install() puts real module objects in sys.modules: `flash_attn` (a package exposing flash-attn 2's
functions and a __version__) and `flash_attn.flash_attn_interface` (ioattn.flash_attn_interface
itself). Code written against flash-attn 2 (the YOLOv12 authors' area attention, which does
`from flash_attn.flash_attn_interface import flash_attn_func` when it can; training scripts, ...)
then runs on ioattn unchanged, on CPU and GPU. uninstall() restores what was there before.
The package carries a module spec, so libraries that probe with importlib.util.find_spec("flash_attn")
(transformers' is_flash_attn_2_available, for one) get an answer instead of a ValueError; it has
no distribution metadata, so importlib.metadata.version("flash_attn") still says it is not installed
and such libraries keep their own, non-flash-attn paths.

PyPI's `ultralytics` (8.3.78 onwards, the releases with YOLO12) does not import flash_attn: its AAttn
computes attention with matmuls. ioattn.integrations.ultralytics routes that one to ioattn.
"""
from __future__ import annotations

import importlib.machinery
import sys
import types
from typing import Dict, Optional

from .. import flash_attn_interface as _interface

# The flash-attn release whose Python API ioattn mirrors; code gating features on the version reads it.
FLASH_ATTN_API_VERSION = "2.7.4"
_MODULES = ("flash_attn", "flash_attn.flash_attn_interface")
_saved: Optional[Dict[str, Optional[types.ModuleType]]] = None


def _package() -> types.ModuleType:
    pkg = types.ModuleType("flash_attn", "flash-attn 2 API served by ioattn (ioattn.integrations.flash_attn_shim)")
    pkg.__path__ = []  # a package: submodules resolve through sys.modules
    # Without a spec, importlib.util.find_spec("flash_attn") raises ValueError for a module in sys.modules.
    pkg.__spec__ = importlib.machinery.ModuleSpec("flash_attn", None, is_package=True)
    pkg.__spec__.submodule_search_locations = []
    pkg.__version__ = FLASH_ATTN_API_VERSION
    pkg.__ioattn_shim__ = True
    for name in _interface.__all__:
        setattr(pkg, name, getattr(_interface, name))
    pkg.flash_attn_interface = _interface
    return pkg


def install() -> None:
    """Route `flash_attn` and `flash_attn.flash_attn_interface` to ioattn (idempotent)."""
    global _saved
    if is_installed():
        return
    _saved = {name: sys.modules.get(name) for name in _MODULES}
    sys.modules["flash_attn"] = _package()
    sys.modules["flash_attn.flash_attn_interface"] = _interface


def uninstall() -> None:
    """Put back the modules install() replaced (or remove the entries if there were none)."""
    global _saved
    if not is_installed():
        return
    for name in _MODULES:
        prev = (_saved or {}).get(name)
        if prev is None:
            sys.modules.pop(name, None)
        else:
            sys.modules[name] = prev
    _saved = None


def is_installed() -> bool:
    return getattr(sys.modules.get("flash_attn"), "__ioattn_shim__", False)
