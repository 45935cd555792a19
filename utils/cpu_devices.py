"""Use every CPU core by default: one XLA host device per core.

On a CPU one XLA device keeps only about 1.3 of the cores busy, while splitting the batch over
one host device per core runs a U-Net 1.5-1.9x faster (../shared/STACK.md). This must run
before JAX is imported; it only affects the CPU platform, so GPU and TPU runs are unchanged.
"""

from __future__ import annotations

import os
import sys

DEVICE_COUNT_FLAG = '--xla_force_host_platform_device_count'


def use_all_cpu_cores(count: int | None = None) -> bool:
    """Sets the XLA host device count to ``count`` (default: usable cores) unless already set.

    Returns whether the flag was set (False if JAX was already imported or the user chose).
    """
    if 'jax' in sys.modules:
        return False  # Too late: JAX keeps the device count it started with.
    flags = os.environ.get('XLA_FLAGS', '')
    if DEVICE_COUNT_FLAG in flags:
        return False
    count = count or len(os.sched_getaffinity(0))
    os.environ['XLA_FLAGS'] = f'{flags} {DEVICE_COUNT_FLAG}={count}'.strip()
    return True
