"""Shared fixtures."""
import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def shared_data():
    """The folder of real data kept for development ($MINIDL_SHARED_DATA, else
    <repo>/../shared/data); tests that need it are skipped where it is absent."""
    path = Path(os.environ.get("MINIDL_SHARED_DATA")
                or Path(__file__).resolve().parents[1].parent / "shared" / "data")
    if not path.is_dir():
        pytest.skip(f"no shared real data at {path} (set MINIDL_SHARED_DATA)")
    return path


@pytest.fixture(scope="module")
def torch_one_thread():
    """One torch thread for a test module (``pytestmark = pytest.mark.usefixtures(
    "torch_one_thread")``): torch's worker threads spin while they wait, and on a busy
    shared machine two of them make tiny models' steps a hundred times slower. No
    result depends on it."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` skip where torch sees no CUDA device (``make gpu-check``
    runs them on a GPU machine)."""
    marked = [item for item in items if "gpu" in item.keywords]
    if not marked:
        return
    try:
        import torch
        present = torch.cuda.is_available()
    except ImportError:
        present = False
    if not present:
        for item in marked:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU"))
