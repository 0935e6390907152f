"""Tiny tensors throughout: every test here runs on one intra-op thread (``one_thread`` of tests/conftest.py)."""

import pytest


@pytest.fixture(autouse=True)
def _every_test_on_one_thread(one_thread: None) -> None:
    """Requests ``one_thread`` for each test of this directory."""
