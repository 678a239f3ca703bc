"""Shared pytest fixtures for the core and plugin test suites.

A test that needs a system tool (openssl, wireguard-go, node, root, /dev/net/tun) calls
``require(condition, reason)``: on a laptop it skips with that reason; in CI (``CI=true``)
it fails, because CI installs everything the suite needs and a skip there would hide a
missing install step.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest


def requirement(ok: bool, reason: str) -> None:
    if ok:
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI must provide this: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture
def require() -> Callable[[bool, str], None]:
    """``require(ok, reason)``: skip locally, fail in CI, when ``ok`` is false."""
    return requirement
