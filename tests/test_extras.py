"""A missing optional dependency names the extra that brings it."""

import pytest

from unimodal.extras import require_extra


def test_missing_module_names_the_extra_to_install():
    with pytest.raises(ImportError, match=r"unimodal.training needs no_such_module_42.*pip install 'unimodal\[train\]'"):
        require_extra("train", "json", "no_such_module_42", feature="unimodal.training")


def test_installed_modules_pass():
    require_extra("train", "json", "torch", feature="unimodal.training")


def test_data_names_both_extras_that_bring_webdataset():
    with pytest.raises(ImportError, match=r"pip install 'unimodal\[train\]' or pip install 'unimodal\[eval\]'"):
        require_extra(("train", "eval"), "no_such_module_42", feature="unimodal.data")


def test_console_script_says_which_extra_in_one_line(monkeypatch, capsys):
    """A console script whose package misses its extra exits 2 with one line, not a traceback."""
    import sys
    import types

    from unimodal.extras import MissingExtraError, run_entry_point

    def missing(name):
        raise MissingExtraError("unimodal.training needs deepspeed ...: pip install 'unimodal[train]'")

    monkeypatch.setattr("importlib.import_module", missing)
    assert run_entry_point("unimodal.training.train") == 2
    assert capsys.readouterr().err.strip() == "error: unimodal.training needs deepspeed ...: pip install 'unimodal[train]'"
    monkeypatch.undo()
    module = types.ModuleType("fake_entry")
    module.main = lambda: {"metric": 1.0}  # the eval runner returns its metrics dict on success
    monkeypatch.setitem(sys.modules, "fake_entry", module)
    assert run_entry_point("fake_entry") == 0
