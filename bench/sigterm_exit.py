"""Time from SIGTERM to exit of ``--mode train`` (preemption gives about 30 s), measured on a
real config: once during a train step, once during a sample snapshot (for the paper config a
PC snapshot of 2000 steps at 128x128, hours on a CPU)::

    python bench/sigterm_exit.py --config configs/ve/ffhq_sr.py --batch 8

Appends to ``bench/results/sigterm_exit.jsonl``. Each case is a fresh ``main.py`` process in a
temporary workdir; the signal is sent once the first step (or the snapshot) has started.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / 'bench' / 'results' / 'sigterm_exit.jsonl'
CASES = {
    # The signal arrives while step 2 trains (step 1 is logged, no snapshot ever runs).
    'train step': (['--config.training.snapshot_freq=0'], r'\] 1/'),
    # A snapshot after step 1 (checkpointed first), signalled once it samples.
    'snapshot': (['--config.training.snapshot_freq=1'], r'\] 1/'),
}


def run_case(config: str, batch: int, extra: list[str], started: str, delay: float) -> dict:
    """Starts training, waits for ``started`` in its log (+ ``delay`` s), sends SIGTERM."""
    workdir = tempfile.mkdtemp(prefix='sigterm_')
    cmd = [sys.executable, str(ROOT / 'main.py'), f'--config={config}', f'--workdir={workdir}',
           f'--config.training.batch_size={batch}', '--config.training.snapshot_batch=8',
           '--config.training.n_iters=1000', '--config.training.log_freq=1',
           '--config.training.checkpoint_freq=1000', *extra]  # fmt: skip
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    began, log = time.monotonic(), []
    for line in proc.stderr:
        log.append(line)
        if re.search(started, line):
            break
    time.sleep(delay)
    proc.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    _, rest = proc.communicate(timeout=3600)
    seconds = time.monotonic() - signalled
    checkpoints = sorted(os.listdir(Path(workdir) / 'checkpoints'))
    return {
        'seconds_to_exit': round(seconds, 2),
        'returncode': proc.returncode,
        'checkpoints': checkpoints,
        'started_after_s': round(signalled - began, 1),
        'log_tail': (''.join(log) + rest).strip().splitlines()[-3:],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--config', default='configs/ve/ffhq_sr.py')
    parser.add_argument('--batch', type=int, default=8)
    parser.add_argument('--delay', type=float, default=5.0, help='seconds after the marker')
    parser.add_argument('--cases', default=','.join(CASES))
    args = parser.parse_args()
    RESULTS.parent.mkdir(exist_ok=True)
    for name in args.cases.split(','):
        extra, started = CASES[name]
        row = {'config': args.config, 'batch': args.batch, 'case': name}
        row.update(run_case(args.config, args.batch, extra, started, args.delay))
        print(json.dumps(row))
        with RESULTS.open('a') as f:
            f.write(json.dumps(row) + '\n')


if __name__ == '__main__':
    main()
