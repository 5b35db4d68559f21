"""Fixtures of the Kubernetes tests only (the shared set-up functions are in setup.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fakes.kubectl import KubectlUnavailable, fetch_kubectl


@pytest.fixture(scope="module")
def kubectl_binary() -> Path:
    try:
        return fetch_kubectl()
    except KubectlUnavailable as exc:
        pytest.fail(f"kubectl is required for these tests and could not be fetched:\n{exc}")
