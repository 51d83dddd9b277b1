"""Sandbox tests share one small generated clinic where they only read it; tests that change a
clinic generate their own (a 300-patient clinic takes a fraction of a second)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

START = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)  # also in the test modules that use it


def generate(seed: int = 7, patients: int = 300, **kwargs):
    from sandbox.cliniko import SandboxClinic

    return SandboxClinic.generate(seed=seed, patients=patients, start=START, **kwargs)


@pytest.fixture
def make_clinic():
    """A fresh clinic of your own (seed, patients, ...) starting at 2026-03-02 09:00 UTC."""
    return generate


@pytest.fixture(scope="session")
def shared_clinic():
    """Read-only: never advance or mutate it."""
    return generate()
