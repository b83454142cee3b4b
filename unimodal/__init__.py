"""unimodal: one transformer with shared weights that understands and generates images.

    from unimodal import UniModal
    model = UniModal.from_pretrained("runs/tiny/export")

Names are imported lazily, so `import unimodal.config` (as data scripts do) does not pay for
loading transformers and diffusers. Importing this package never loads deepspeed or webdataset.
"""

from importlib import import_module

__version__ = "0.1.0"

_EXPORTS = {
    "UniModal": "api",
    "ModelConfig": "config",
    "Batch": "layout",
    "Example": "layout",
    "SequenceLayout": "layout",
    "UniModalModel": "model",
    "UniModalOutput": "model",
    "Tokenizer": "tokenizer",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'unimodal' has no attribute {name!r}")
