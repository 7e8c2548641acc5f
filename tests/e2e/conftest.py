"""Shared fixtures for the end-to-end tests: the kiln binary and the golden models."""

import os
import pathlib
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def kiln():
    binary = pathlib.Path(os.environ.get("KILN_BIN", ROOT / "build" / "bin" / "kiln"))
    if not binary.exists():
        pytest.fail(f"kiln binary not found at {binary}; build first (scripts/test.sh)")

    def run(*args, timeout=300, cwd=None):
        return subprocess.run([str(binary), *map(str, args)], capture_output=True, text=True,
                              timeout=timeout, cwd=cwd)

    return run


@pytest.fixture(scope="session")
def golden_model():
    return ROOT / "tests" / "golden" / "data" / "sd1" / "model"
