"""The package as users install it: lean imports, one version, a typed and documented API, a
layout whose modules and functions stay small."""

from __future__ import annotations

import ast
import importlib.metadata
import inspect
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

import optclip

ROOT = Path(__file__).resolve().parents[1]
SUBMODULES = ("diagnostics", "theory", "problems")


def _public_objects():
    for name in optclip.__all__:
        if name not in SUBMODULES:
            yield f"optclip.{name}", getattr(optclip, name)
    for sub in SUBMODULES:
        module = getattr(optclip, sub)
        for name in module.__all__:
            yield f"optclip.{sub}.{name}", getattr(module, name)


PUBLIC_FUNCTIONS = [
    (path, obj)
    for path, obj in _public_objects()
    if inspect.isfunction(obj) and inspect.signature(obj).parameters
]


def test_import_loads_no_optional_dependency():
    code = (
        "import sys, optclip, optclip.diagnostics, optclip.theory, optclip.problems\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'flax', 'tqdm', 'matplotlib'}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip() == "[]", out.stdout


def test_version_has_one_source():
    try:
        installed = importlib.metadata.version("optclip")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("optclip is not installed (run from a checkout): no metadata to compare")
    assert optclip.__version__ == installed
    assert 'dynamic = ["version"]' in (ROOT / "pyproject.toml").read_text()


@pytest.mark.parametrize("path,fn", PUBLIC_FUNCTIONS, ids=[p for p, _ in PUBLIC_FUNCTIONS])
def test_public_function_documents_every_argument(path, fn):
    doc = inspect.getdoc(fn) or ""
    assert "Args:" in doc, f"{path} has no Args section"
    args = doc.split("Args:", 1)[1]
    missing = [
        p for p in inspect.signature(fn).parameters if not re.search(rf"^\s+{p}:", args, flags=re.M)
    ]
    assert not missing, f"{path}: no Args entry for {missing}"


@pytest.mark.parametrize("path,fn", PUBLIC_FUNCTIONS, ids=[p for p, _ in PUBLIC_FUNCTIONS])
def test_public_signature_has_no_bare_any(path, fn):
    sig = inspect.signature(fn)
    annotations = [str(p.annotation) for p in sig.parameters.values()]
    annotations.append(str(sig.return_annotation))
    bad = [a for a in annotations if re.search(r"\bAny\b", a)]
    assert not bad, f"{path} is annotated with Any: {bad}"
    unannotated = [n for n, p in sig.parameters.items() if p.annotation is inspect.Parameter.empty]
    assert not unannotated, f"{path}: arguments without a type: {unannotated}"


def _python_files(*folders):
    for folder in folders:
        yield from sorted((ROOT / folder).rglob("*.py"))


@pytest.mark.parametrize("folder", ["optclip", "benchmarks"])
def test_files_and_functions_stay_small(folder):
    too_long = []
    for path in _python_files(folder):
        text = path.read_text()
        if text.count("\n") > 450:
            too_long.append(f"{path.relative_to(ROOT)}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                if length > 100:
                    too_long.append(f"{path.relative_to(ROOT)}:{node.name}: {length} lines")
    assert not too_long, too_long


@pytest.mark.parametrize(
    ("old", "new"), [("monitor", "track_statistics"), ("MonitorState", "TrackStatisticsState")]
)
def test_renamed_diagnostics_warn_and_still_work(old, new):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = getattr(optclip.diagnostics, old)
    assert value is getattr(optclip.diagnostics, new)
    assert any(issubclass(w.category, DeprecationWarning) and new in str(w.message) for w in caught)
    assert old not in optclip.diagnostics.__all__


@pytest.mark.parametrize("name", optclip.numerics.__all__)
def test_helpers_moved_to_numerics_warn_and_still_work(name):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = getattr(optclip, name)
    assert value is getattr(optclip.numerics, name)
    assert any(
        issubclass(w.category, DeprecationWarning) and f"optclip.numerics.{name}" in str(w.message)
        for w in caught
    )
    assert name not in optclip.__all__


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no_such_name"):
        optclip.no_such_name  # noqa: B018


def test_dependency_floors_have_one_source():
    """pyproject.toml declares exactly the floors that optclip checks at import."""
    import tomllib

    from optclip import _requirements

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    declared = dict(re.fullmatch(r"([a-z]+)>=([\d.]+)", d).groups() for d in deps)
    assert declared == _requirements.MINIMUM
    floor = (ROOT / ".ci" / "floor.txt").read_text()
    pinned = dict(re.findall(r"^([a-z]+)==([\d.]+)", floor, flags=re.M))
    for name, version in _requirements.MINIMUM.items():
        assert _requirements.release(pinned[name])[:2] == _requirements.release(version)[:2], name


def test_a_stack_below_the_floor_is_named_at_import():
    from optclip import _requirements

    current = {"jax": "0.12.0.1", "jaxlib": "0.12.0.1", "optax": "0.2.8", "chex": "0.1.92"}
    _requirements.check({**current, "numpy": "2.4.0rc1"})  # nothing below: no error
    _requirements.check({**current, "numpy": None})  # no metadata: nothing to compare
    with pytest.raises(
        ImportError, match=r"optax 0\.2\.4 is installed; optclip needs optax>=0\.2\.5"
    ):
        _requirements.check({**current, "optax": "0.2.4"})
    with pytest.raises(ImportError, match=r"jax 0\.4\.9 is installed; optclip needs jax>=0\.6\.0"):
        _requirements.check({**current, "jax": "0.4.9"})
    assert _requirements.release("0.12.0.1") == (0, 12, 0, 1)
    assert _requirements.release("1.26") < _requirements.release("1.26.4")
    with pytest.raises(ValueError, match="not a version"):
        _requirements.release("dev")


def test_a_package_without_metadata_is_not_checked():
    from optclip import _requirements

    assert _requirements._installed("optclip-no-such-distribution") is None
    assert _requirements._installed("numpy") == importlib.metadata.version("numpy")
