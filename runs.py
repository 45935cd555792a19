"""A trained model on disk: a run folder or a model package, read and written in one place.

Every mode opens the folder it is given as a :class:`Run`; nothing else reads or writes these
files (``export.py`` builds a package through :func:`write_package_config` and friends):

==========================  =========  ========  ===============================================
file                        run        package   written by
==========================  =========  ========  ===============================================
``config.json``             yes        yes       train (each start), export (the model's fields)
``config_history.jsonl``    yes                  train (each start and its allowed changes)
``checkpoints/<step>``      yes                  train (orbax, ``utils.checkpoint``)
``checkpoints.rejected/``   yes                  train (unreadable checkpoints set aside)
``residual_stats.json``     ECDP       ECDP      ``--mode stats`` (or ``sde.stats_file``; a
                                                 student: its teacher's, ``--mode distill``)
``distill_teacher.json``    student              ``--mode distill`` (the teacher and its step;
                                                 a package: ``export.json['teacher']``)
``ema_params.msgpack``                 yes       export (EMA weights, float16 by default)
``export.json``                        yes       export (marks the folder as a package)
``mean/``                              learned   export (the mean run's regression, a package)
``MODEL_CARD.md``                      yes       by hand (kept across re-exports)
==========================  =========  ========  ===============================================

**Configs are complete.** A record (``config.json``) holds every field of the model: a
package leaves out only :data:`RUN_OPTIONS` (options of a run of the model, which its users set
with their own flags and defaults). Reading a record that lacks a field, because older code
wrote it, fills the field from :data:`MIGRATIONS` (the value that reproduces what that older code
did, with the reason) or refuses, naming the field and the file: a field is never silently given
today's default. A field the record has and today's config does not know is refused too.

Paths inside a package name its own parts relative to the package (``sde.mean_model = 'mean'``)
so that it works wherever the repository is checked out; :meth:`Run.record` makes them
absolute. Every file is written atomically (a temporary file renamed over the target).

No JAX at import time (``main.py`` reads packages before it sets up the devices): the two
methods that read weights import it when called.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import ml_collections

CONFIG_FILE = 'config.json'
HISTORY_FILE = 'config_history.jsonl'
CHECKPOINTS_DIR = 'checkpoints'
STATS_FILE = 'residual_stats.json'
WEIGHTS_FILE = 'ema_params.msgpack'
EXPORT_FILE = 'export.json'
MEAN_DIR = 'mean'
TEACHER_FILE = 'distill_teacher.json'
CARD_FILE = 'MODEL_CARD.md'
#: Where sr and eval write for a package (it is read-only): in the working directory, as
#: GFPGAN's 'results'.
PACKAGE_OUTPUT = 'results'
#: Config fields holding paths to other parts of a run (relative inside a package).
PATH_FIELDS = (('sde', 'mean_model'),)
#: Config sections that are options of a run of the model, not the model: a package leaves
#: them out, so that its users get today's defaults (e.g. ``sr.detect_scale``) and their own
#: flags (training and optim stay: the recipe, for the record).
RUN_OPTIONS = ('sr', 'eval', 'export', 'classifier_training', 'guidance')

# Fields that must match between training and inference: they change what the network means.
MUST_MATCH = (
    'model',
    'sde',
    'score',
    'data.image_size',
    'data.downscale',
    'data.centered',
    'data.down_kernel',
    'data.up_kernel',
    'data.num_channels',
)
# Fields that may differ when a run resumes: its length, how often it logs, checkpoints and
# snapshots, how snapshots, sr and eval sample, and machine settings. Any other field (model,
# SDE, score, data, optimizer, seed, batch) must equal the run's record: changing one would
# silently continue training another setup, and erase the record sr and eval check against.
MAY_CHANGE_ON_RESUME = (
    'training.n_iters',
    'training.log_freq',
    'training.checkpoint_freq',
    'training.checkpoint_keep',
    'training.snapshot_freq',
    'training.snapshot_batch',
    'training.init_from',  # (read only when a run starts without a checkpoint)
    'training.init_fresh',  # (as init_from)
    'training.quality_max_unfinished',  # (when to stop, not what is trained)
    'sampling',
    'sr',
    'export',
    'eval',
    'guidance',
    'classifier_training',
    'compute.cpu_devices',
    'compute.conv_grads',  # Only how gradients are computed, not the function.
    'data.cache_mb',
    'data.allow_split_overlap',
)
# The data fields the residual statistics depend on; a run whose config differs from the
# record refuses. (``data.path`` is recorded too, but not compared: a run may move.)
STATS_DATA_FIELDS = (
    'source',
    'image_size',
    'resize_mode',
    'downscale',
    'down_kernel',
    'up_kernel',
    'antialias',
    'centered',
    'noise_sigma',
    'blur_sigma',
    'jpeg_quality',
    'random_degradation',
    'blur_sigma_range',
    'noise_sigma_range',
    'jpeg_quality_range',
    'down_kernels',
    'num_channels',
)


class Migration(NamedTuple):
    """The value of a field for records written before the field existed, and why."""

    value: Any
    why: str


#: Fields added after records (runs, shipped packages) were written: what the older code did.
MIGRATIONS = {
    'compute.conv_grads': Migration('lax', "before it existed, lax's own gradients ran"),
    'training.quality_unroll': Migration(False, 'before it existed, the solve was not unrolled'),
    'sampling.temperature': Migration(1.0, 'before it existed, the prior was not tempered'),
    'training.identity_weight': Migration(0.0, 'before it existed, there was no identity loss'),
    'training.init_fresh': Migration((), 'before it existed, init_from set every parameter'),
    'training.distill_schedule': Migration(
        '', "before it existed, students were distilled on sampling.schedule's grid (unchecked)"
    ),
    **{
        f'training.{name}': Migration(value, 'before it existed, nothing was distilled')
        for name, value in (
            ('distill_weight', 0.0),
            ('distill_teacher', ''),
            ('distill_teacher_steps', 20),
            ('distill_levels', 1),
            ('distill_temperature', (1.0, 1.0)),
            ('distill_gt_weight', 0.0),
            ('distill_quality_weight', 0.0),
        )
    },
    'training.quality_max_unfinished': Migration(
        1.0, 'before it existed, unfinished quality-loss solves never stopped training'
    ),
    **{
        f'data.{name}': Migration(value, 'before it existed, LR was not randomly degraded')
        for name, value in (
            ('random_degradation', False),
            ('blur_sigma_range', (0.0, 0.0)),
            ('noise_sigma_range', (0.0, 0.0)),
            ('jpeg_quality_range', (0, 0)),
            ('down_kernels', ()),
        )
    },
}


def write_text(path: Path, text: str) -> None:
    """Writes ``text`` to ``path`` atomically (a temporary file renamed over the target)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + '.tmp')
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json(path: Path, record: Any) -> None:
    """``record`` as indented JSON at ``path``, atomically."""
    write_text(path, json.dumps(record, indent=1, default=str))


def read_json(path: Path, what: str) -> Any:
    """The JSON in ``path``; a missing or broken file raises naming it and ``what`` it is."""
    if not path.is_file():
        raise FileNotFoundError(f'{path}: no {what}')
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f'{path}: not a JSON {what} ({err})') from None


def flatten(tree: Any, prefix: str = '') -> dict[str, Any]:
    """``{'a': {'b': 1}}`` as ``{'a.b': 1}``; tuples as lists (as JSON records them)."""
    if not isinstance(tree, dict):
        return {prefix: list(tree) if isinstance(tree, tuple) else tree}
    out = {}
    for key, value in tree.items():
        out.update(flatten(value, f'{prefix}.{key}' if prefix else key))
    return out


def matches(key: str, prefixes: tuple[str, ...]) -> bool:
    """Whether ``key`` is one of ``prefixes`` or a field inside one."""
    return any(key == p or key.startswith(p + '.') for p in prefixes)


def _defaults() -> ml_collections.ConfigDict:
    from configs import default  # (configs/pretrained.py imports this module's importers)

    return default.get_config()


def merge(config: ml_collections.ConfigDict, record: dict[str, Any], where: str) -> None:
    """Sets every field of ``record`` in ``config`` (JSON lists become tuples where the field is
    a tuple); a field ``config`` does not have is refused, naming it and ``where``."""
    for key, value in record.items():
        if key not in config:
            raise ValueError(f'{where}: unknown config field {key!r}')
        if isinstance(config[key], ml_collections.ConfigDict):
            merge(config[key], value, f'{where}:{key}')
        elif isinstance(config[key], tuple):  # (A string recorded before a field was a tuple.)
            config[key] = ((value,) if value else ()) if isinstance(value, str) else tuple(value)
        else:
            config[key] = value


def complete(record: dict[str, Any], where: str) -> ml_collections.ConfigDict:
    """Today's config with every field of ``record``, and each field the record lacks filled
    from :data:`MIGRATIONS` (:data:`RUN_OPTIONS` from today's defaults). A missing field with
    no migration is refused, naming every such field and ``where``."""
    config = _defaults()
    have = flatten(record)
    missing = [k for k in flatten(config.to_dict()) if k not in have]
    missing = [k for k in missing if not matches(k, RUN_OPTIONS)]
    unknown = [k for k in missing if k not in MIGRATIONS]
    if unknown:
        raise ValueError(
            f'{where} has no value for ' + ', '.join(f'config.{k}' for k in unknown) + ': it '
            'was written by older code and no migration (runs.MIGRATIONS) says what that code '
            'did; re-export the model or add the migration'
        )
    merge(config, record, where)
    for key in missing:
        *sections, field = key.split('.')
        node = config
        for section in sections:
            node = node[section]
        node[field] = MIGRATIONS[key].value
    return config


@dataclasses.dataclass(frozen=True)
class Run:
    """A run folder (training writes it) or a model package (export writes it)."""

    folder: Path

    @classmethod
    def open(cls, folder: str | Path) -> Run:
        return cls(Path(folder))

    @property
    def is_package(self) -> bool:
        """Whether this is an exported model package (it holds :data:`EXPORT_FILE`)."""
        return (self.folder / EXPORT_FILE).is_file()

    @property
    def is_run(self) -> bool:
        """Whether training wrote here (a config record, history or checkpoints)."""
        names = (CONFIG_FILE, HISTORY_FILE, CHECKPOINTS_DIR)
        return not self.is_package and any((self.folder / n).exists() for n in names)

    def resolve(self, value: str) -> str:
        """A path recorded here: absolute against the folder when this is a package and the
        path is relative; as recorded otherwise ('' stays '')."""
        if not value or Path(value).is_absolute() or not self.is_package:
            return value
        return str((self.folder / value).absolute())

    def output_dir(self, kind: str) -> Path:
        """Where a mode writes by default: ``<run>/<kind>``; ``results/<kind>`` for a package
        (read-only: in the working directory)."""
        return Path(PACKAGE_OUTPUT if self.is_package else self.folder) / kind

    # ----------------------------------------------------------------- config and history

    @property
    def config_path(self) -> Path:
        return self.folder / CONFIG_FILE

    def has_config(self) -> bool:
        return self.config_path.is_file()

    def record(self) -> dict[str, Any]:
        """The config recorded here as a dict, package paths resolved.

        Raises ``FileNotFoundError`` naming the file when there is none, ``ValueError`` when it
        is not JSON.
        """
        record = read_json(self.config_path, 'run config (not a run folder or model package)')
        for section, key in PATH_FIELDS:
            if key in record.get(section, {}):
                record[section][key] = self.resolve(record[section][key])
        return record

    def config(self) -> ml_collections.ConfigDict:
        """The complete config recorded here (:func:`complete`), inner paths absolute."""
        return complete(self.record(), str(self.config_path))

    def flat_config(self) -> dict[str, Any]:
        """The recorded config, flattened, with migrated fields (for comparisons)."""
        record = self.config().to_dict()
        if self.is_package:  # Run options are not part of a package: nothing to compare.
            record = {k: v for k, v in record.items() if k not in RUN_OPTIONS}
        return flatten(record)

    def changes(self, config: Any) -> dict[str, tuple[Any, Any]]:
        """Fields whose value in ``config`` differs from the record: ``{key: (recorded, now)}``
        ({} without a record)."""
        if not self.has_config():
            return {}
        recorded = self.flat_config()
        current = flatten(json.loads(config.to_json_best_effort()))
        return {
            k: (recorded[k], current[k])
            for k in sorted(recorded.keys() & current.keys())
            if recorded[k] != current[k]
        }

    def check_matches(self, config: Any, must_match: tuple[str, ...] = MUST_MATCH) -> None:
        """Fails, naming every field, if ``config`` differs from the record on a field of
        ``must_match`` (default: those that change the model's meaning; no record: no check)."""
        wrong = [
            f'config.{k}: trained {old!r}, now {new!r}'
            for k, (old, new) in self.changes(config).items()
            if matches(k, must_match)
        ]
        if wrong:
            raise ValueError(
                f'the config does not match the one {self.config_path} was trained with:\n  '
                + '\n  '.join(wrong)
            )

    def check_resume(self, config: Any, step: int) -> dict[str, tuple[Any, Any]]:
        """Refuses, naming every field, to resume at ``step`` with a config that differs from
        the record outside :data:`MAY_CHANGE_ON_RESUME`; returns the allowed changes."""
        changes = self.changes(config)
        refused = [k for k in changes if not matches(k, MAY_CHANGE_ON_RESUME)]
        if refused:
            lines = [
                f'config.{k}: trained {changes[k][0]!r}, now {changes[k][1]!r}' for k in refused
            ]
            raise ValueError(
                f'{self.config_path}: cannot resume from checkpoint {step} with a config that '
                'changes what is trained:\n  ' + '\n  '.join(lines) + '\nRestore these values '
                f'or train in a new --workdir (fields that may change: {MAY_CHANGE_ON_RESUME})'
            )
        return changes

    def save_config(self, config: Any) -> None:
        """Records ``config`` as the run's config."""
        write_text(self.config_path, config.to_json_best_effort(indent=2))

    def record_start(self, config: Any, step: int | None, changes: dict) -> None:
        """Appends this start (resumed ``step`` or None, changed fields) to the history and
        records ``config`` as the run's config."""
        entry = {
            'time': time.strftime('%Y-%m-%dT%H:%M:%S%z'),
            'resumed_from': step,
            'changed': {k: list(v) for k, v in changes.items()},
        }
        path = self.folder / HISTORY_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, 'a') as f:
            f.write(json.dumps(entry, default=str) + '\n')
        self.save_config(config)

    def history(self) -> Iterator[dict[str, Any]]:
        """The recorded starts, oldest first."""
        path = self.folder / HISTORY_FILE
        if path.is_file():
            yield from (json.loads(line) for line in path.read_text().splitlines() if line)

    # ----------------------------------------------------------------- export record

    def export_record(self) -> dict[str, Any]:
        """The package's ``export.json``."""
        return read_json(self.folder / EXPORT_FILE, 'export record')

    def teacher(self) -> dict[str, Any] | None:
        """What a distilled student was distilled from, ``{'teacher': folder, 'name': its
        folder's name, 'step': n}``
        (pinned at the student's first start); None for a model that is not a student (or a
        student not started yet)."""
        if self.is_package:
            return self.export_record().get('teacher')
        path = self.folder / TEACHER_FILE
        return read_json(path, 'distillation teacher record') if path.is_file() else None

    def write_teacher(self, record: dict[str, Any]) -> None:
        """Pins the teacher of a student run (``distillation.load_teacher``)."""
        write_json(self.folder / TEACHER_FILE, record)

    @property
    def scopes(self) -> tuple[str, ...]:
        """The top-level parameter scopes the weights hold: those a package was pruned to (a
        learned mean's encoder and regression head), () for all (every run)."""
        return tuple(self.export_record().get('scopes', ())) if self.is_package else ()

    # ----------------------------------------------------------------- weights

    def ema_params(self, state: Any, step: int | None = None, scopes: tuple[str, ...] = ()):
        """The EMA parameters of checkpoint ``step`` (default: the latest) and that step.

        ``state``: the abstract training state (shapes, dtypes, shardings) the checkpoint must
        fit; ``scopes``: only these top-level parameter collections, all if empty. A package
        has one step, the exported one. Raises ``CheckpointError`` naming the folder or file
        when there is no checkpoint, when the newest cannot be read (readers never fall back
        to an older step: ask for one), or when it does not fit the configured model.
        """
        target = state.ema_params
        if scopes:
            target = {k: target[k] for k in scopes}
        if self.is_package:
            return self._package_params(target, step, bool(scopes))
        state, step = self._restore(state, step)
        params = state.ema_params
        return ({k: params[k] for k in scopes} if scopes else params), step

    def _restore(self, target: Any, step: int | None) -> tuple[Any, int]:
        from utils.checkpoint import Checkpointer, CheckpointError

        directory = self.folder / CHECKPOINTS_DIR
        if not directory.is_dir():
            raise CheckpointError(f'no checkpoints in {directory}: train first (--mode train)')
        checkpointer = Checkpointer(directory, keep=None, async_save=False)
        try:
            if step is None:
                state = checkpointer.restore_latest(target, fall_back=False)
                if state is None:
                    raise CheckpointError(f'no checkpoints in {directory}: train first')
            elif step not in checkpointer.steps():
                raise CheckpointError(
                    f'no checkpoint {step} in {directory}; available: {checkpointer.steps()}'
                )
            else:
                state = checkpointer.restore(step, target)
        finally:
            checkpointer.close()
        return state, int(state.step)

    def _package_params(
        self, target: Any, step: int | None, scoped: bool = False
    ) -> tuple[Any, int]:
        """The exported EMA weights, checked against ``target`` (shapes, tree) and cast to its
        dtypes, placed like ``target``; ``scoped``: ``target`` holds some of the model's
        top-level scopes, and the package's others are not read (they may differ: a warm
        start of another SR factor, ``training.init_fresh``)."""
        import flax.serialization
        import jax
        import numpy as np
        from flax.traverse_util import flatten_dict, unflatten_dict

        from utils.checkpoint import CheckpointError

        path = self.folder / WEIGHTS_FILE
        exported = self.export_record()['step']
        if step is not None and step != exported:
            raise CheckpointError(f'{path} holds step {exported} only, not {step}')
        try:
            stored = flax.serialization.msgpack_restore(path.read_bytes())
        except (OSError, ValueError) as err:
            raise CheckpointError(f'{path}: unreadable weights ({err})') from err
        if scoped:
            stored = {k: v for k, v in stored.items() if k in target}
        want = dict(flatten_dict(target, sep='/'))
        got = dict(flatten_dict(stored, sep='/'))
        wrong = [f'{k}: missing' for k in sorted(want.keys() - got.keys())]
        wrong += [f'{k}: not in this model' for k in sorted(got.keys() - want.keys())]
        wrong += [
            f'{k}: shape {tuple(got[k].shape)}, the model has {tuple(want[k].shape)}'
            for k in sorted(want.keys() & got.keys())
            if tuple(got[k].shape) != tuple(want[k].shape)
        ]
        if wrong:
            raise CheckpointError(
                f'{path} does not fit the configured model ({len(wrong)} arrays differ):\n  '
                + '\n  '.join(wrong[:10])
            )
        params = jax.tree.map(
            lambda a, s: jax.device_put(np.asarray(a, s.dtype), s.sharding),
            unflatten_dict({tuple(k.split('/')): v for k, v in got.items()}),
            target,
        )
        return params, exported

    # ----------------------------------------------------------------- residual statistics

    def stats_path(self, config: Any) -> Path:
        """``config.sde.stats_file``, or ``<folder>/residual_stats.json`` when it is empty."""
        return Path(config.sde.stats_file or self.folder / STATS_FILE)

    def write_stats(self, config: Any, stats: dict[str, Any]) -> Path:
        """Writes the residual statistics of ``config``'s data, atomically; their path."""
        path = self.stats_path(config)
        write_text(path, json.dumps(stats, indent=2))
        return path

    def read_stats(self, config: Any) -> dict[str, Any]:
        """The residual statistics of this run, checked against ``config``: raises naming the
        file if they are missing or unreadable, and naming each data field, and the learned
        mean (``sde.mean_model``: its folder), whose configured value differs from the one they
        were made with. ``stats['mean_model_step']`` is the step of the mean they were made
        around: the only step of the mean that may be used with them (``mean_model.load``)."""
        path = self.stats_path(config)
        if not path.is_file():
            raise FileNotFoundError(
                f'{path}: no residual statistics; this SDE needs them. Make them with '
                '`python main.py --config C --workdir W --mode stats` (or set '
                'config.sde.stats_file)'
            )
        stats = read_json(path, 'residual statistics file')
        try:
            recorded = stats['data']
            float(stats['residual_var'])
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f'{path}: not a residual statistics file ({err!r})') from None
        recorded = {k: _recorded_data(recorded, k) for k in STATS_DATA_FIELDS}
        differ = [
            f'data.{k} (stats: {recorded[k]!r}, config: {config.data[k]!r})'
            for k in STATS_DATA_FIELDS
            if _listed(recorded[k]) != _listed(config.data[k])
        ]
        recorded_mean = Run(path.parent).resolve(stats.get('mean_model', ''))
        mean = config.sde.get('mean_model', '')
        if recorded_mean != mean:
            differ.append(f'sde.mean_model (stats: {recorded_mean!r}, config: {mean!r})')
        if differ:
            raise ValueError(f'{path} was made with other settings: ' + '; '.join(differ))
        return {**stats, 'mean_model': recorded_mean}


def _recorded_data(recorded: dict, name: str) -> Any:
    """A data field of a statistics record; one written before the field existed has what
    the older code did (:data:`MIGRATIONS`)."""
    if name in recorded or f'data.{name}' not in MIGRATIONS:
        return recorded.get(name)
    return MIGRATIONS[f'data.{name}'].value


def _listed(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def write_package_config(config: Any, folder: Path) -> None:
    """The model's complete config as a package records it: every field but
    :data:`RUN_OPTIONS`, the learned mean as the package's own ``mean/``, statistics inside."""
    packaged = {k: v for k, v in config.to_dict().items() if k not in RUN_OPTIONS}
    if packaged['sde'].get('mean_model', ''):
        packaged['sde']['mean_model'] = MEAN_DIR
    packaged['sde']['stats_file'] = ''
    text = ml_collections.ConfigDict(packaged).to_json_best_effort(indent=2)
    write_text(folder / CONFIG_FILE, text)


def write_package_stats(stats: dict[str, Any], folder: Path) -> None:
    """A run's residual statistics inside a package: their mean is the package's ``mean/``."""
    if stats.get('mean_model'):
        stats = {**stats, 'mean_model': MEAN_DIR}
    write_text(folder / STATS_FILE, json.dumps(stats, indent=2))


def write_export_record(folder: Path, record: dict[str, Any]) -> None:
    """``export.json``: what was exported, from where; it marks the folder as a package."""
    write_json(folder / EXPORT_FILE, record)
