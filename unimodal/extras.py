"""Optional dependency groups (the extras of pyproject.toml): a clear error when one is missing.

The inference install (`pip install unimodal`) has no deepspeed or webdataset; the training, data
and evaluation packages call `require_extra` when imported, so a user learns which extra to install
instead of reading a bare `ModuleNotFoundError` from deep inside an import chain.
"""

from importlib.util import find_spec


def require_extra(extra: str, *modules: str, feature: str) -> None:
    """Raise `ImportError` naming `pip install 'unimodal[extra]'` if any of `modules` is not installed.

    Only looks the modules up (`importlib.util.find_spec`), so it imports nothing itself."""
    missing = [name for name in modules if find_spec(name) is None]
    if missing:
        raise ImportError(f"{feature} needs {', '.join(missing)}, which the inference install leaves out: "
                          f"pip install 'unimodal[{extra}]' (from a clone: pip install -e '.[{extra}]')")
