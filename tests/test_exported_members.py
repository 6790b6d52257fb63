"""``otel_audit.__all__`` is exactly the public API, and every name in it is documented."""

from __future__ import annotations

import inspect

import otel_audit
from otel_audit import compat


def test_all_matches_public_names() -> None:
    public = {name for name in dir(otel_audit) if not name.startswith("_")}
    modules = {name for name in public if inspect.ismodule(getattr(otel_audit, name))}
    modules.add("annotations")  # from __future__ import annotations
    assert set(otel_audit.__all__) | {"__version__"} >= public - modules
    for name in otel_audit.__all__:
        assert hasattr(otel_audit, name), name


def test_public_objects_have_docstrings() -> None:
    for name in otel_audit.__all__:
        obj = getattr(otel_audit, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert inspect.getdoc(obj), name


def test_compat_all() -> None:
    for name in compat.__all__:
        assert hasattr(compat, name), name
