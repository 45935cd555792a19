"""Command line: ``python main.py --config configs/ve/ffhq_sr.py --workdir W --mode train``.

Flags and config only; each mode is a function ``run(config, workdir)`` registered in
``modes.MODES``. Config fields are overridden as in score_sde: ``--config.training.n_iters=10``;
``--sr.input=PATH`` is short for ``--config.sr.input=PATH`` (see :func:`expand_sr_flags`).
"""

from __future__ import annotations

import logging
import os
import sys

from absl import app, flags
from ml_collections import config_flags

import pretrained  # (imports no JAX)
from utils.cpu_devices import use_all_cpu_cores

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Experiment configuration file.', lock_config=True)
flags.DEFINE_string('workdir', None, 'Folder for checkpoints, summaries and outputs.')
flags.DEFINE_string(
    'mode', 'train', 'What to run: train, sr, eval, stats, export, distill or train_classifier.'
)
flags.DEFINE_string(
    'coordinator_address',
    None,
    'Multi-host: host:port of process 0 (TPU pods and SLURM detect it).',
)
flags.DEFINE_integer('num_processes', None, 'Multi-host: number of processes.')
flags.DEFINE_integer('process_id', None, 'Multi-host: index of this process.')
flags.DEFINE_bool('distributed', False, 'Call jax.distributed.initialize() (multi-host).')
flags.mark_flags_as_required(['config', 'workdir'])


def expand_sr_flags(argv: list[str]) -> list[str]:
    """Rewrites ``--sr.X...`` to ``--config.sr.X...`` (the SR mode's spelling) before absl."""
    if '--' in argv:  # Arguments after '--' are not flags.
        end = argv.index('--')
        return expand_sr_flags(argv[:end]) + argv[end:]
    return ['--config.' + a[2:] if a.startswith('--sr.') else a for a in argv]


def main(argv: list[str]) -> None:
    del argv
    logging.getLogger().setLevel(logging.INFO)
    # orbax logs every checkpoint phase at INFO through absl's logger; keep the console readable.
    logging.getLogger('absl').setLevel(logging.WARNING)
    config = FLAGS.config
    # Must precede the first JAX import: one XLA device per core on CPU (STACK.md).
    use_all_cpu_cores(config.compute.cpu_devices or None)
    import jax

    if FLAGS.distributed or FLAGS.coordinator_address:
        jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
    import modes
    from utils.compilation_cache import enable_compilation_cache
    from utils.preemption import Preempted

    enable_compilation_cache()
    logging.info('devices: %s', jax.devices())
    try:
        modes.MODES.get(FLAGS.mode)(config, FLAGS.workdir)
    except Preempted as stop:  # XLA still runs abandoned work: a normal exit would abort.
        logging.warning('preempted: %s; exiting now', stop)
        logging.shutdown()
        sys.stderr.flush()
        os._exit(0)


if __name__ == '__main__':
    # A shipped model for --mode sr without --config; config_flags reads sys.argv for overrides.
    sys.argv[:] = expand_sr_flags(pretrained.main_flags(sys.argv))
    app.run(main)
