"""The trial process keeps freed tensor memory: repeated training steps stop page-faulting it in."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from trainables.allocator import glibc

STEPS = 40
PROGRAM = textwrap.dedent(
    """
    import resource, sys, torch
    from torch import nn
    from trainables.allocator import keep_freed_memory
    if sys.argv[1] == "keep":
        assert keep_freed_memory()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(32 * 16 * 16, 10)
    )
    x, y = torch.randn(64, 3, 32, 32), torch.randint(10, (64,))

    def step():
        model.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()

    for _ in range(5):
        step()
    start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(int(sys.argv[2])):
        step()
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start)
    """
)


def minor_faults(mode: str) -> int:
    """Minor page faults of ``STEPS`` SGD steps (8 MiB activations) in a fresh process."""
    done = subprocess.run([sys.executable, "-c", PROGRAM, mode, str(STEPS)], capture_output=True, text=True, check=True)
    return int(done.stdout.strip())


@pytest.mark.skipif(glibc() is None, reason="libc is not glibc: malloc's thresholds cannot be set")
def test_steps_stop_faulting_in_their_activations() -> None:
    plain, kept = minor_faults("plain"), minor_faults("keep")
    assert plain > STEPS * 300, f"glibc's defaults no longer unmap freed activations ({plain} faults): drop the module"
    assert kept < 10_000, f"{kept} faults in {STEPS} steps with malloc's thresholds raised ({plain} without)"
