"""Optional dependency groups (the extras of pyproject.toml): a clear error when one is missing.

The inference install (`pip install unimodal`) has no deepspeed or webdataset; the training, data
and evaluation packages call `require_extra` when imported, so a user learns which extra to install
instead of reading a bare `ModuleNotFoundError` from deep inside an import chain.
"""

from importlib.util import find_spec


class MissingExtraError(ImportError):
    """An optional dependency group is not installed; the message says what to pip install."""


def require_extra(extras: str | tuple[str, ...], *modules: str, feature: str) -> None:
    """Raise `MissingExtraError` naming `pip install 'unimodal[extra]'` (each of `extras` is enough)
    if any of `modules` is not installed. Only looks the modules up (`importlib.util.find_spec`), so
    it imports nothing itself."""
    missing = [name for name in modules if find_spec(name) is None]
    if missing:
        extras = (extras,) if isinstance(extras, str) else extras
        installs = " or ".join(f"pip install 'unimodal[{extra}]'" for extra in extras)
        raise MissingExtraError(f"{feature} needs {', '.join(missing)}, which the inference install leaves out: "
                                f"{installs} (from a clone: pip install -e '.[{extras[0]}]')")


def run_entry_point(module: str) -> int:
    """`main()` of `module`, for a console script: a missing extra is one line on stderr and exit
    status 2 instead of a traceback."""
    import sys
    from importlib import import_module

    try:
        main = import_module(module).main
    except MissingExtraError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    result = main()
    return result if isinstance(result, int) else 0
