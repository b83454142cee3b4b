"""A missing optional dependency names the extra that brings it."""

import pytest

from unimodal.extras import require_extra


def test_missing_module_names_the_extra_to_install():
    with pytest.raises(ImportError, match=r"unimodal.training needs no_such_module_42.*pip install 'unimodal\[train\]'"):
        require_extra("train", "json", "no_such_module_42", feature="unimodal.training")


def test_installed_modules_pass():
    require_extra("train", "json", "torch", feature="unimodal.training")
