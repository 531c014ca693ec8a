"""The package's Python API: the names ``import graft`` offers (imported on first use, so that the command line
starts without torch) are the objects of the modules that own them."""

from __future__ import annotations

import importlib

import pytest

import graft

PACKAGES = ("graft", "graft.features", "graft.model", "graft.serving")  # each exports its modules' names lazily


@pytest.mark.parametrize(("package", "name"), [(p, n) for p in PACKAGES for n in importlib.import_module(p).__all__])
def test_every_exported_name_is_its_owning_modules_object(package, name):
    module = importlib.import_module(package)
    owner = importlib.import_module(module._EXPORTS.module_of[name])
    assert getattr(module, name) is getattr(owner, name) and name in dir(module)


def test_the_readme_examples_names_are_exported():
    assert {"fit", "load_run", "GraftConfig", "load_manifest", "assign_splits", "create_backbone", "extract_features",
            "fuse_observations", "lifeclef_score", "identify"} <= set(graft.__all__)


def test_an_unknown_name_is_an_attribute_error_naming_it():
    with pytest.raises(AttributeError, match="no attribute 'fitt'"):
        graft.fitt  # noqa: B018
    with pytest.raises(ImportError, match="fitt"):
        from graft import fitt  # noqa: F401
