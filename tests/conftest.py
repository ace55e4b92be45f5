"""Shared fixtures: where the real sample files live (never copied into the repo)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SAMPLES = Path(os.environ.get("NPTRACK_SAMPLES", REPO.parent / "shared" / "samples"))


@pytest.fixture(scope="session")
def samples_dir() -> Path:
    if not SAMPLES.is_dir():
        pytest.fail(f"sample data not found at {SAMPLES}: clone ../shared beside the repo")
    return SAMPLES


@pytest.fixture(scope="session")
def formats_dir(samples_dir: Path) -> Path:
    return samples_dir / "formats"
