"""Shared fixtures. `run_python` runs a fresh interpreter outside the source tree, so that it
imports the installed kt_moe (with its compiled module), not the kt_moe/ folder of the checkout."""

import os
import subprocess
import sys

import pytest


@pytest.fixture
def run_python(tmp_path):
    def run(*args, env=None, timeout=120):
        return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout,
                              cwd=tmp_path, env={**os.environ, **(env or {})})
    return run
