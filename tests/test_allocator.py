"""Freed activation memory stays mapped: repeated passes cost no page faults."""

from __future__ import annotations

import statistics
import subprocess
import sys

import pytest

from segearth.allocator import keep_freed_memory

# A fresh interpreter per setting (it is per process): a pass whose 32 MB intermediates are freed
# before it ends, repeated; prints the minor page faults of each pass.
PROBE = """
import resource, sys
import torch
torch.set_num_threads(1)
if sys.argv[1] == "keep":
    from segearth.allocator import keep_freed_memory
    assert keep_freed_memory()
x = torch.randn(2048, 4096)

def forward():
    y = x * 2
    z = y + 1
    return z.relu().sum()

forward()
for _ in range(8):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    forward()
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults_per_pass(mode: str) -> float:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
    return statistics.median(int(line) for line in out.stdout.split())


@pytest.mark.skipif(not keep_freed_memory(), reason="the C library is not glibc")
def test_freed_activation_memory_is_reused_without_page_faults():
    default, kept = faults_per_pass("default"), faults_per_pass("keep")
    assert default > 2 * 8192  # three 32 MB intermediates of 8 192 pages, mapped anew every pass
    assert kept < 1_000, kept  # measured 0
