"""Device selection: the most devices that split every batch evenly (issue 12 #1)."""

from __future__ import annotations

import dataclasses
import logging

import pytest

from utils import parallel


@dataclasses.dataclass(frozen=True)
class FakeDevice:
    id: int
    process_index: int = 0


def _devices(per_host: int, hosts: int = 1) -> list[FakeDevice]:
    return [FakeDevice(h * per_host + i, h) for h in range(hosts) for i in range(per_host)]


@pytest.mark.parametrize(
    ('available', 'batches', 'used'),
    [
        (1, (8,), 1),
        (2, (8,), 2),
        (3, (8,), 2),
        (5, (8,), 4),
        (6, (8,), 4),
        (7, (8,), 4),
        (8, (8,), 8),
        (12, (16,), 8),
        (6, (6, 8), 2),  # Train and snapshot batches both split.
        (5, (5,), 5),
    ],
)
def test_largest_count_dividing_every_batch(available, batches, used, caplog):
    sizes = {f'b{i}': b for i, b in enumerate(batches)}
    with caplog.at_level(logging.WARNING):
        chosen = parallel.devices_for_batch(sizes, _devices(available))
    assert chosen == _devices(available)[:used]
    assert (f'using {used} of the {available} devices' in caplog.text) == (used < available)


def test_many_hosts_use_the_same_count_on_each():
    devices = _devices(per_host=3, hosts=2)
    chosen = parallel.devices_for_batch({'training.batch_size': 8}, devices)
    assert [(d.process_index, d.id) for d in chosen] == [(0, 0), (0, 1), (1, 3), (1, 4)]
    chosen = parallel.devices_for_batch({'training.batch_size': 6}, devices)
    assert chosen == devices
    with pytest.raises(ValueError, match=r'config\.training\.batch_size=7: .* 2 hosts'):
        parallel.devices_for_batch({'training.batch_size': 7}, devices)
