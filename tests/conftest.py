"""Make ``tests/`` importable so test modules can share ``dist_utils``; fixtures every directory may use."""

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One intra-op thread for the test, restored after it.

    Tiny tensors and many small calls run fastest and steadiest single-threaded on a busy
    shared machine (parallel regions only add wake-ups and contention). Request it by name,
    with ``pytestmark = pytest.mark.usefixtures("one_thread")`` for a whole module, or from
    a directory's autouse fixture for a whole directory.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
