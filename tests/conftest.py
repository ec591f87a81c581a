"""Shared test fixtures: paths to ../shared/data, and skips for optional peers."""
import importlib.util
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# ../shared/data next to the checkout (CI lays shared/ beside the clone); override with HITCNN_SHARED_DATA.
SHARED_DATA = Path(os.environ.get("HITCNN_SHARED_DATA", REPO.parent / "shared" / "data"))


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _cuda_available() -> bool:
    if not _has("cupy"):
        return False
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


HAS_TORCH = _has("torch")
HAS_LIBROSA = _has("librosa")


def pytest_collection_modifyitems(config, items):
    """Skip `gpu` tests without CUDA and `torch` tests without PyTorch."""
    cuda = None
    for item in items:
        if "gpu" in item.keywords:
            if cuda is None:
                cuda = _cuda_available()
            if not cuda:
                item.add_marker(pytest.mark.skip(reason="needs CuPy and a CUDA device"))
        if "torch" in item.keywords and not HAS_TORCH:
            item.add_marker(pytest.mark.skip(reason="PyTorch not installed (optional oracle)"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path to ../shared/data; the test is skipped cleanly when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA


def _subdir(shared_data: Path, name: str) -> Path:
    p = shared_data / name
    if not p.is_dir():
        pytest.skip(f"{p} not found")
    return p


@pytest.fixture(scope="session")
def fma_mini(shared_data) -> Path:
    """Path to ../shared/data/fma_mini (skip when absent)."""
    return _subdir(shared_data, "fma_mini")


@pytest.fixture(scope="session")
def fsdd(shared_data) -> Path:
    """Path to ../shared/data/fsdd (skip when absent)."""
    return _subdir(shared_data, "fsdd")
