"""Shared fixtures. `run_python` runs a fresh interpreter outside the source tree, so that it
imports the installed kt_moe (with its compiled module), not the kt_moe/ folder of the checkout.
Every test runs with one torch thread (one_torch_thread); `isa_level` switches the kernels' ISA level
for tests parametrised with indirect=True."""

import os
import subprocess
import sys

import pytest
import torch

import kt_moe

START_ISA = kt_moe.cpu_info()["active"]  # the best level, unless KT_MOE_ISA forced another one


@pytest.fixture
def isa_level(request):
    """Switch to the ISA level request.param; restore the level the run started with afterwards."""
    kt_moe.set_isa(request.param)
    yield request.param
    kt_moe.set_isa(START_ISA)


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Test tensors are small: torch's second thread costs more than it saves, and far more on a busy
    machine, where its spin-waits take turns with the work (measured: the INT4 quantizer on ten
    224 x 192 experts took 29 s with two threads while two other processes ran, 0.045 s with one).
    Tests that need more threads set them; the count is restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def run_python(tmp_path):
    def run(*args, env=None, timeout=120):
        return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout,
                              cwd=tmp_path, env={**os.environ, **(env or {})})
    return run
