"""Many tiny backward passes (and worker threads): every test here runs on one intra-op thread."""

import pytest


@pytest.fixture(autouse=True)
def _every_test_on_one_thread(one_thread: None) -> None:
    """Requests ``one_thread`` (tests/conftest.py) for each test of this directory."""
