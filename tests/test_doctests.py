"""The docstring examples of the product run and hold (doctest).

Every product module (``engine/``, ``kernels/``, ``pipeline/``, ``cli.py``, ``cli_args.py``, ``cli_checks.py``) whose source
holds a ``>>>`` line is imported and its examples are run, so an example can not rot unnoticed. Modules
without examples are not imported (importing a kernel module compiles its Numba kernels). Examples that need
data or a device carry ``# doctest: +SKIP``. A GPU module is skipped when CuPy is absent.
"""
from __future__ import annotations

import doctest
import importlib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PRODUCT = ("engine", "kernels", "pipeline", "cli.py", "cli_args.py", "cli_checks.py")


def product_modules():
    """Dotted names of every product module, sorted."""
    names = []
    for root in PRODUCT:
        path = REPO / root
        files = [path] if path.suffix == ".py" else sorted(path.rglob("*.py"))
        for f in files:
            parts = f.relative_to(REPO).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            names.append(".".join(parts))
    return sorted(names)


def _path(name):
    p = REPO.joinpath(*name.split("."))
    return p / "__init__.py" if p.is_dir() else p.with_suffix(".py")


WITH_EXAMPLES = [m for m in product_modules() if ">>>" in _path(m).read_text()]


def test_some_modules_have_examples():
    assert "pipeline.stft" in WITH_EXAMPLES


@pytest.mark.parametrize("name", WITH_EXAMPLES)
def test_docstring_examples(name):
    if name.startswith("kernels.gpu"):
        pytest.importorskip("cupy")
    module = importlib.import_module(name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    report = []
    for test in finder.find(module, name):
        runner.run(test, out=report.append)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, "".join(report)
