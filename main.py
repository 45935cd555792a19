"""Command line: ``python main.py --config configs/ve/ffhq_sr.py --workdir W --mode train``.

Flags and config only; each mode is a function ``run(config, workdir)`` registered in
``modes.MODES``. Config fields are overridden as in score_sde: ``--config.training.n_iters=10``;
``--sr.input=PATH`` is short for ``--config.sr.input=PATH`` (see :func:`expand_sr_flags`).
"""

from __future__ import annotations

import logging
import os
import sys
from typing import NoReturn

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
flags.DEFINE_bool(
    'verbose', False, 'Show the traceback of an error in the input too (files, flags, values).'
)
flags.mark_flags_as_required(['config', 'workdir'])

# What the code raises for a user's input (a missing or bad file, a bad flag or config value):
# printed as one line, ``error: <what and where>``, exit status 2 (``--verbose``: traceback).
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError)
USER_ERROR_STATUS = 2


def user_error(err: BaseException) -> NoReturn:
    """Prints ``err`` as one line on stderr and exits with :data:`USER_ERROR_STATUS`."""
    message = ' '.join(str(err).split()) or type(err).__name__
    print(f'error: {message}', file=sys.stderr)
    sys.exit(USER_ERROR_STATUS)


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
        mode = modes.MODES.get(FLAGS.mode)
    except KeyError as err:  # An unknown --mode: its message lists the known ones.
        user_error(ValueError(str(err).strip('"')))
    try:
        mode(config, FLAGS.workdir)
    except USER_ERRORS as err:
        if FLAGS.verbose:
            raise
        logging.shutdown()
        user_error(err)
    except Preempted as stop:  # XLA still runs abandoned work: a normal exit would abort.
        logging.warning('preempted: %s; exiting now', stop)
        logging.shutdown()
        sys.stderr.flush()
        os._exit(0)


if __name__ == '__main__':
    # A shipped model for --mode sr without --config; config_flags reads sys.argv for overrides.
    try:
        sys.argv[:] = expand_sr_flags(pretrained.main_flags(sys.argv))
    except ValueError as err:  # A bad --sr.model (nothing is loaded yet).
        user_error(err)
    app.run(main)
