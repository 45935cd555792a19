"""``--mode eval``: super-resolves an eval split and measures SR and baselines (SDE-SR Table I).

``python main.py --config C --workdir W --mode eval`` writes ``W/eval/<name>/``:

* ``records.jsonl``: one line per image, by dataset index: identity, and per recogniser of
  ``eval.face`` whether it found a face on the HR and the HR embedding; per method, PSNR,
  SSIM, LR consistency, LPIPS, and per recogniser CS and the output's embedding (format and
  the per-recogniser keys, ``cs`` for SFace and ``cs_dlib`` for dlib:
  :mod:`evaluation.report`). The file is rewritten through a temporary file and a rename
  after every batch, so a killed eval keeps every finished batch;
  a restart skips the images already recorded, so nothing is counted twice. ``settings.json``
  holds what the values depend on (data, sampler, checkpoint step, seed, metric networks); a
  restart with other settings stops with an error instead of mixing them.
* ``metrics.json`` (settings, summary and per-image values), ``metrics.csv`` (per-image rows,
  then per-method mean and std rows), ``table.md``, ``roc.png``, ``cmc.png`` (and
  ``roc_lfw.png`` for pair protocols, see below): computed at
  the end from the records of the first ``eval.max_images`` images, so a resumed and an
  uninterrupted eval report the same numbers.
* ``grid.png``: LR | bicubic | SR | HR of the first ``eval.grid_images`` images.

Cost: each sampled method records its NFE and ``seconds`` per image (the wall time of its
batch, sampling and gathering, divided by ``eval.batch_size``; compilation is done before).

LR (``eval.down_kernel``, ``eval.degradation``): by default the model's own, made as
``config.data`` says; ``--config.eval.down_kernel=area`` (or ``bicubic:noaa``...) makes it with
another kernel, ``--config.eval.degradation=degraded`` adds the fixed blur, noise and JPEG of
``configs/degradation_presets.py``. The model, its config checks and statistics keep
``config.data`` (``--config.data.down_kernel`` would be refused as a different model); the
LR's own settings go into ``settings.json`` (``data``), the folder name (``-lr_area``,
``-degraded``) and the consistency metric (the LR's kernel). An eval's LR is never random:
``data.random_degradation`` is switched off for it (``bench/kernels.py`` reports every kernel).

LFW pairs (``--config.data.source=lfw_pairs --config.data.path=../shared/data/lfw_pairs``):
the split ``test`` is the sorted unique images of the View-2 pairs, aligned into the training
crop geometry (celeba_id128's, :class:`faces.lfw.LFWAligner`), with LR made from them as
for any source; identities are persons. Sources with a pair list
(:data:`evaluation.lfw.PAIR_PROTOCOLS`) add, per method, LFW 10-fold accuracy, AUC, TAR@FAR of
the pairs scored SR-HR (output of the first image vs HR of the second) and SR-SR (both
outputs): ``metrics.json`` ``methods[m]['lfw_pairs']``, two ``LFW acc`` table columns and
``roc_lfw.png``. ``eval.max_images`` would cut pairs apart and is refused below the dataset
size: use ``data.pairs_per_fold`` (that many same and different pairs per fold) instead.

Methods (``eval.methods``): ``sr`` samples ``config.sampling`` with the EMA parameters of
checkpoint ``eval.checkpoint`` (0: the latest); ``bicubic`` is the batch's ``lr_up`` (the
``data.up_kernel`` upsampling of the LR); ``hr`` is the HR image itself (PSNR inf, CS 1: the
ceiling of the identity metrics). With baselines only, no model is built or loaded. SR image
``i`` is sampled with ``fold_in(PRNGKey(eval.seed), i)``: it depends neither on the batch nor
on the devices, so a resumed eval samples the same images. Outputs are clipped to [0, 1].

Guidance (``config.guidance`` names attributes): ``srdg`` is evaluated beside ``sr``, the same
sampler, seed and images steered by the attribute classifiers (``guidance.py``) to each
image's targets (``guidance.attributes_csv`` matched to the image files, or
``guidance.targets`` for all); the guidance settings are part of the folder name
(``...-srdg-<attributes>-h<h>-<targets>``) and of ``settings.json``. Every method then also
gets ``attr_prob``: the classifiers' probability of the image's requested attributes on its
output at noise ``guidance.eval_sigma`` (does guidance move the attribute?), and
``judge_prob``: the same probability by an independent classifier that did not guide
(``guidance.judge``, :mod:`evaluation.judge`), over the attributes it judges.

Face metrics (``eval.face``: recognisers, default ``('sface', 'dlib')``; on the command line
``--config.eval.face=sface,dlib``, ``=dlib``, or ``=`` for none) align on the HR image, each
recogniser its own way (SFace: YuNet landmarks -> ArcFace template; dlib: its detector, 5-point
landmarks and face chip), and cut HR and output with the same transform, so an SR artefact
never moves the crop (:mod:`evaluation.face`). Every identity column (CS, AUC, TAR@FAR,
rank-k, LFW pairs, identity stability) is reported per recogniser; ``roc.png`` and ``cmc.png``
have a panel per recogniser.

Sweep (``eval.sweep_key='sampling.snr'``, ``eval.sweep_values=(...)``): evaluates ``sr`` once
per value (each in its own folder, resumable), the baselines once, and writes
``W/eval/<name>-sweep-<key>/sweep.json`` and ``sweep.png``: PSNR and CS against the value and
their Pearson correlation, over the sweep means and over all (value, image) pairs (SDE-SR
Figs. 4 and 5).

Multi-host: every host samples its slice of each batch; process 0 gathers the batch and the
SR images, computes the metrics and writes every file (``W`` must be shared, as for
checkpoints).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

import datasets
import degradations
import experiment
import guidance as guidance_lib
import mean_model
import runs
import sampling
import uncertainty
from configs import degradation_presets
from degradations import resize
from evaluation import image_metrics as im
from evaluation import judge as judge_lib
from evaluation import report
from evaluation.lfw import PAIR_PROTOCOLS
from evaluation.protocols import cosine_similarity
from utils import parallel
from utils.images import make_grid, save_png, to_rgb
from utils.progress import Progress

# 'srdg': SR sampled with classifier guidance (config.guidance), beside the unguided 'sr';
# 'posterior_mean': the mean of eval.posterior_samples unguided samples per image (trades
# sharpness for PSNR; adds the samples' pixel std and identity stability, see uncertainty.py);
# 'embedding_mean': the same K samples judged by identity as one: each recogniser's embedding
# is the normalised mean of the K samples' embeddings (what a forensic examiner would compare),
# its images are sample 0;
# 'mean': the learned mu(y) of config.sde.mean_model itself (a regression baseline).
METHODS = ('sr', 'srdg', 'posterior_mean', 'embedding_mean', 'mean', 'bicubic', 'hr')
# Methods that need the trained model.
SAMPLED = ('sr', 'srdg', 'posterior_mean', 'embedding_mean')
POSTERIOR = ('posterior_mean', 'embedding_mean')  # Methods of the K posterior draws.
RECORDS, SETTINGS = 'records.jsonl', 'settings.json'


@dataclasses.dataclass(frozen=True)
class Guided:
    """What ``srdg`` adds (``config.guidance``): the classifiers, their variables (replicated
    over the mesh, and on the host for judging outputs) and the targets of every image."""

    guide: guidance_lib.Guidance
    variables: Any
    host_variables: Any
    targets: np.ndarray  # [dataset size, attributes], by dataset index.


@dataclasses.dataclass(frozen=True)
class Model:
    """What ``sr`` samples with: the experiment (SDE, network, mesh), EMA params, their step;
    ``guided`` for ``srdg``."""

    exp: experiment.Experiment
    params: Any
    step: int
    guided: Guided | None = None
    mean: mean_model.MeanModel = mean_model.MeanModel()
    # Compiled samplers by settings (``sampler_key``), shared by the copies a sweep makes, so a
    # sweep over h (an argument of the guided sampler) compiles once.
    compiled: dict = dataclasses.field(default_factory=dict, repr=False, compare=False)


@dataclasses.dataclass(frozen=True)
class MetricFns:
    """The metrics that load networks, built once per run (``None``: off)."""

    lpips: Callable[[Any, Any], jax.Array] | None
    # The recognisers of ``eval.face`` by name, in its order ({}: face metrics off).
    embedders: dict[str, Any] = dataclasses.field(default_factory=dict)
    # ``attributes(outputs, dataset_indices) -> [B]``: the classifiers' probability of each
    # image's requested attributes (``config.guidance``; None: no guidance configured).
    attributes: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None
    # ``judge(outputs, dataset_indices) -> [B]``: the same probability by the independent
    # judge ``config.guidance.judge`` (evaluation/judge.py) over the attributes it judges.
    judge: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None


# ----------------------------------------------------------------------------- settings


def parse_methods(methods: Sequence[str]) -> tuple[str, ...]:
    """``eval.methods`` in table order; entries may hold commas (``--config.eval.methods=a,b``)."""
    names = {m.strip() for item in methods for m in str(item).split(',') if m.strip()}
    if not names or not names <= set(METHODS):
        raise ValueError(f'config.eval.methods={tuple(methods)!r}: give one or more of {METHODS}')
    return tuple(m for m in METHODS if m in names)


def with_guidance(methods: tuple[str, ...], config: Any) -> tuple[str, ...]:
    """Adds ``srdg`` beside ``sr`` when ``config.guidance`` names attributes (guided and
    unguided in one run); ``srdg`` without guidance is an error."""
    guided = bool(config.guidance.attributes)
    if 'srdg' in methods and not guided:
        raise ValueError('eval method srdg needs config.guidance.attributes and checkpoints')
    if guided and 'sr' in methods:
        methods = tuple(m for m in METHODS if m in methods or m == 'srdg')
    return methods


def sampler_tag(s: Any) -> str:
    """A readable name of the sampler settings of ``config.sampling`` (``s``)."""
    parts = [s.method]
    if s.method == 'pc':
        parts += [s.predictor, s.corrector]
        if s.corrector != 'none':
            parts += [f'snr{s.snr:g}', f'm{s.n_steps_each}']
    if s.method == 'ode':
        parts.append(f'tol{s.rtol:g}')
    else:
        parts += [f'n{s.num_steps or "N"}', s.schedule]
    if s.method == 'dpm2m' and s.eta:
        parts.append(f'eta{s.eta:g}')
    if s.projection != 'none':
        parts.append(s.projection)
    return '-'.join(parts)


def lr_config(config: Any) -> Any:
    """A copy of ``config`` whose ``data`` makes the eval's LR (module doc): ``eval.down_kernel``
    and ``eval.degradation`` applied, random degradation off."""
    ecfg, point = config.eval, copy.deepcopy(config)
    point.data.random_degradation = False
    if ecfg.down_kernel:
        try:
            point.data.down_kernel, point.data.antialias = degradations.parse_kernel(
                ecfg.down_kernel
            )
        except ValueError as err:
            raise ValueError(f'config.eval.down_kernel: {err}') from None
    point.data.update(degradation_presets.eval_degradation(ecfg.degradation))
    return point


def lr_tag(ecfg: Any) -> str:
    """The eval name's part for a non-default LR: ``-lr_<kernel>[_noaa]``, ``-<degradation>``."""
    kernel = f'-lr_{ecfg.down_kernel.replace(":", "_")}' if ecfg.down_kernel else ''
    return kernel + (f'-{ecfg.degradation}' if ecfg.degradation else '')


def eval_name(config: Any, methods: Sequence[str], step: int | None) -> str:
    """``<dataset>-<split>-x<factor>-`` then the sampler and checkpoint, or ``baselines``.

    A subset of pairs (``data.pairs_per_fold`` N > 0) adds ``-pairsN`` to the dataset, an LR
    other than the model's own its :func:`lr_tag` after the factor.
    """
    data = config.data
    subset = f'-pairs{data.pairs_per_fold}' if data.pairs_per_fold else ''
    base = (
        f'{Path(data.path).name or data.source}{subset}-{datasets.split_name(config.eval.split)}'
        f'-x{data.downscale}{lr_tag(config.eval)}'
    )
    if not set(SAMPLED) & set(methods):
        return f'{base}-baselines'
    guided = f'-{guidance_lib.tag(config.guidance)}' if 'srdg' in methods else ''
    return f'{base}-{sampler_tag(config.sampling)}-step{step}{guided}'


def eval_root(config: Any, workdir: str | Path) -> Path:
    """Where evals are written: ``eval.output``, else ``W/eval``; a shipped model's package is
    read-only, so its evals go to ``results/eval`` (in the working directory)."""
    if config.eval.output:
        return Path(config.eval.output)
    return runs.Run.open(workdir).output_dir('eval')


def eval_settings(
    config: Any,
    methods: Sequence[str],
    step: int | None,
    mean: mean_model.MeanModel,
) -> dict[str, Any]:
    """What the per-image values depend on (JSON types), stored as ``settings.json``: among
    them the learned mean's folder and step, and the dtype networks compute in. ``config``:
    :func:`lr_config`'s, whose ``data`` is the LR's (random degradation off, so its fields,
    which do not change it, are left out: folders made before they existed still match)."""
    ecfg = config.eval
    data = config.data.to_dict()
    if not data.get('random_degradation', False):
        data = {k: v for k, v in data.items() if k not in datasets.RANDOM_DEGRADATION_FIELDS}
    settings = {
        'data': data,
        'split': datasets.split_name(ecfg.split),
        'lpips': ecfg.lpips,
        # 'sface,dlib' ('sface' alone as every folder before several recognisers holds it).
        'face': ','.join(recogniser_names(ecfg.face)),
    }
    if mean.apply is not None:
        settings['mean_model'] = {'folder': mean.workdir, 'step': mean.step}
    if 'srdg' in methods:
        settings['guidance'] = config.guidance.to_dict()
    if set(POSTERIOR) & set(methods):
        settings['posterior_samples'] = ecfg.posterior_samples
        settings['posterior_temperature'] = ecfg.posterior_temperature
    if set(SAMPLED) & set(methods):
        settings.update(
            checkpoint_step=step,
            seed=ecfg.seed,
            sde=config.sde.to_dict(),
            model=config.model.to_dict(),
            score=config.score.to_dict(),
            sampling=config.sampling.to_dict(),
            compute_dtype=config.compute.dtype,
        )
    return json.loads(json.dumps(settings))


def check_settings(out: Path, settings: dict[str, Any], write: bool) -> None:
    """Fails if ``out`` holds records made with other settings; records them if new."""
    path = out / SETTINGS
    if path.exists():
        stored = json.loads(path.read_text())
        differ = sorted(
            k for k in stored.keys() | settings.keys() if stored.get(k) != settings.get(k)
        )
        if differ:
            raise ValueError(
                f'{out} holds records made with other settings ({", ".join(differ)}'
                ' differ): set --config.eval.name or remove that folder'
            )
    elif write:
        out.mkdir(parents=True, exist_ok=True)
        report.write_json(path, settings)


def pair_list(config: Any, size: int) -> dict[str, np.ndarray] | None:
    """The pair protocol's pairs of ``config.data.source`` (dataset indices), ``None`` if none.

    Refuses ``eval.max_images`` below the dataset ``size``: it would cut pairs apart.
    """
    source = config.data.source
    if source not in PAIR_PROTOCOLS:
        return None
    if 0 < config.eval.max_images < size:
        raise ValueError(
            f'config.eval.max_images={config.eval.max_images} would split pairs of data.source='
            f'{source!r}: set it to 0 and choose fewer pairs with data.pairs_per_fold'
        )
    return PAIR_PROTOCOLS.get(source)(config.data)


# ----------------------------------------------------------------------------- records


def load_records(path: Path) -> dict[int, dict[str, Any]]:
    """The per-image records of an earlier (possibly interrupted) run, by dataset index."""
    if not path.exists():
        return {}
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {r['index']: r for r in records}


def save_records(path: Path, records: dict[int, dict[str, Any]]) -> None:
    """All records, sorted by index, written to a temporary file then renamed (atomic)."""
    report.atomic_write_text(path, ''.join(json.dumps(records[i]) + '\n' for i in sorted(records)))


def missing(record: dict[str, Any] | None, methods: Sequence[str]) -> list[str]:
    """The methods ``record`` has no values for (all of them for an unseen image)."""
    done = record['methods'] if record else {}
    return [m for m in methods if m not in done]


# ----------------------------------------------------------------------------- per batch


def image_metrics(
    out: np.ndarray, batch: dict[str, np.ndarray], data_config: Any
) -> dict[str, np.ndarray]:
    """PSNR and SSIM (RGB) against the HR and LR consistency, ``[B]`` each."""
    factor, kernel = int(data_config.downscale), data_config.down_kernel
    return {
        'psnr': np.asarray(im.psnr(out, batch['hr'])),
        'ssim': np.asarray(im.ssim(out, batch['hr'])),
        'consistency': np.asarray(im.consistency(out, batch['lr'], factor, kernel)),
    }


def recogniser_names(face: Any, field: str = 'config.eval.face') -> tuple[str, ...]:
    """``eval.face`` as recogniser names (:func:`evaluation.face.parse_recognisers`)."""
    from evaluation.face import parse_recognisers

    return parse_recognisers(face, field)


def face_metrics(
    embedder: Any, hr: np.ndarray, outputs: dict[str, np.ndarray], names: Sequence[str] = ()
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Faces found on the HR, HR embeddings and each output's, all cut with the HR transform
    (``names``: the HR images' names in a refusal of a tiny or blank one)."""
    alignment = embedder.align(hr, names=list(names) or None)
    hr_emb = embedder.embed(embedder.apply_alignment(hr, alignment))
    embs = {
        m: hr_emb if m == 'hr' else embedder.embed(embedder.apply_alignment(out, alignment))
        for m, out in outputs.items()
    }
    return alignment.detected, hr_emb, embs


def batch_records(
    batch: dict[str, np.ndarray],
    outputs: dict[str, np.ndarray],
    rows: list[int],
    fns: MetricFns,
    config: Any,
    cost: dict[str, dict[str, np.ndarray]] | None = None,
) -> dict[int, dict[str, Any]]:
    """Records of batch ``rows`` with every metric of every method in ``outputs`` (``cost``:
    per sampled method, ``nfe`` network evaluations and ``seconds`` of sampling per image)."""
    values = {m: image_metrics(out, batch, config.data) for m, out in outputs.items()}
    for m, out in outputs.items():
        if fns.lpips is not None:
            values[m]['lpips'] = np.asarray(fns.lpips(to_rgb(out), to_rgb(batch['hr'])))
        if fns.attributes is not None:
            values[m]['attr_prob'] = np.asarray(fns.attributes(out, batch['index']))
        if fns.judge is not None:
            values[m]['judge_prob'] = np.asarray(fns.judge(to_rgb(out), batch['index']))
        values[m].update((cost or {}).get(m, {}))
    records = {}
    for r in rows:
        index = int(batch['index'][r])
        methods = {m: {k: float(v[r]) for k, v in vals.items()} for m, vals in values.items()}
        records[index] = {'index': index, 'id': int(batch['id'][r]), 'methods': methods}
    for name, embedder in fns.embedders.items():
        add_face_records(records, batch, outputs, rows, name, embedder)
    return records


def add_face_records(
    records: dict[int, dict],
    batch: dict[str, np.ndarray],
    outputs: dict[str, np.ndarray],
    rows: list[int],
    name: str,
    embedder: Any,
) -> None:
    """Recogniser ``name``'s fields (``detected``, ``emb_hr``, per method ``cs`` and ``emb``,
    keyed by :func:`report.face_key`) added to the records of batch ``rows``."""
    key = lambda k: report.face_key(k, name)
    detected, hr_emb, embs = face_metrics(
        embedder,
        to_rgb(batch['hr'][rows]),
        {m: to_rgb(o[rows]) for m, o in outputs.items()},
        [f'dataset index {int(batch["index"][r])}' for r in rows],
    )
    cs = {m: cosine_similarity(e, hr_emb) for m, e in embs.items()}
    for j, r in enumerate(rows):
        record = records[int(batch['index'][r])]
        record[key('detected')] = bool(detected[j])
        record[key('emb_hr')] = report.encode_embedding(hr_emb[j])
        for m in outputs:
            values = record['methods'][m]
            values[key('cs')] = float(cs[m][j])
            values[key('emb')] = report.encode_embedding(embs[m][j])


def batch_outputs(
    batch: dict[str, np.ndarray], sampled: dict[str, tuple], need: Sequence[str]
) -> dict[str, np.ndarray]:
    """Each needed method's output for the batch: sampled, or a baseline read off the batch."""
    mu = batch.get(mean_model.MEAN_KEY)
    given = {'bicubic': batch['lr_up'], 'hr': batch['hr']}
    given['mean'] = None if mu is None else np.clip(mu, 0, 1)
    return {m: sampled[m][0] if m in sampled else given[m] for m in need}


def merge_records(records: dict[int, dict], new: dict[int, dict]) -> None:
    """Adds ``new`` to ``records``, keeping methods an image already had values for."""
    for index, record in new.items():
        if index in records:
            record['methods'] = {**records[index]['methods'], **record['methods']}
        records[index] = record


def write_grid(
    path: Path, batch: dict[str, np.ndarray], sr: np.ndarray | None, rows: list[int], n: int
) -> None:
    """LR (nearest) | bicubic | SR (if sampled) | HR of the first ``n`` of ``rows``."""
    rows = rows[:n]
    hr = batch['hr'][rows]
    lr = np.asarray(resize(batch['lr'][rows], hr.shape[1:3], 'nearest'))
    columns = [lr, batch['lr_up'][rows]] + ([sr[rows]] if sr is not None else []) + [hr]
    save_png(make_grid(columns), path)


def eval_batches(config: Any, start: int, hosts: int) -> Iterator[dict[str, np.ndarray]]:
    """Eval batches from batch ``start``: this host's rows if ``hosts`` > 1, else all rows."""
    index = jax.process_index() if hosts > 1 else 0
    return datasets.get_dataset(
        config.data,
        config.eval.split,
        config.eval.batch_size,
        seed=config.seed,
        process_index=index,
        process_count=hosts,
        start_step=start,
        train=False,
    )


# ----------------------------------------------------------------------------- model


def load_model(config: Any, workdir: str | Path, devices: Any = None) -> Model:
    """The experiment over ``devices`` and the EMA parameters of ``eval.checkpoint``.

    The mesh uses the most of ``devices`` that split ``eval.batch_size`` evenly (logged).
    """
    batches = {'eval.batch_size': config.eval.batch_size}
    exp = experiment.build(config, parallel.devices_for_batch(batches, devices), workdir)
    params, step = exp.load_ema_params(workdir, config.eval.checkpoint or None)
    logging.info('eval: checkpoint %d of %s', step, workdir)
    mean = mean_model.load(config, exp.mesh.devices.flatten(), workdir)
    return Model(exp, params, step, load_guided(config, exp), mean)


def load_mean(
    config: Any, workdir: str | Path, methods: Sequence[str], model: Model | None
) -> mean_model.MeanModel:
    """The learned mu(y) the methods need: the model's, or loaded for the 'mean' baseline (at
    the step the run's residual statistics pin)."""
    if model is not None:
        return model.mean
    if 'mean' not in methods:
        return mean_model.MeanModel()
    if not config.sde.mean_model:
        raise ValueError("config.eval.methods has 'mean' but config.sde.mean_model is not set")
    return mean_model.load(config, workdir=workdir)


def load_guided(config: Any, exp: experiment.Experiment) -> Guided | None:
    """The classifiers, variables and per-image targets of ``config.guidance`` (or None)."""
    guide = guidance_lib.make_guidance(config.guidance, config.data.centered)
    if guide is None:
        return None
    source = datasets.open_source(config.data, config.eval.split).source
    files = getattr(source, 'files', None)
    if files is None and config.guidance.attributes_csv:
        raise ValueError(
            f'config.guidance.attributes_csv needs image files; data.source='
            f'{config.data.source!r} has none: give config.guidance.targets'
        )
    sources = [str(f) for f in files] if files is not None else [''] * len(source)
    targets = guidance_lib.input_targets(config.guidance, sources)
    host = guidance_lib.load_variables(guide, config.guidance, exp.hr_shape)
    return Guided(guide, parallel.replicate(host, exp.mesh), host, targets)


def attribute_fn(config: Any, guided: Guided) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """``MetricFns.attributes``: the classifiers judge outputs in [0, 1] at
    ``guidance.eval_sigma``, each against its image's targets."""
    sigma = config.guidance.eval_sigma
    prob = jax.jit(lambda v, x, a: guidance_lib.target_probability(guided.guide, v, x, a, sigma))

    def attributes(outputs: np.ndarray, indices: np.ndarray) -> np.ndarray:
        targets = guided.targets[np.maximum(indices, 0)]
        return np.asarray(prob(guided.host_variables, outputs.astype(np.float32), targets))

    return attributes


def judge_fn(config: Any, guided: Guided) -> Callable[[np.ndarray, np.ndarray], np.ndarray] | None:
    """``MetricFns.judge``: ``config.guidance.judge`` on outputs in [0, 1], each against its
    image's targets; None (logged) when no judge is set or it judges none of the attributes."""
    judge = judge_lib.make_judge(config.guidance.judge)
    requested = tuple(config.guidance.attributes)
    if judge is None or not judge_lib.judged(judge, requested):
        logging.info('eval: no independent judge of %s (config.guidance.judge)', requested)
        return None

    def judge_prob(outputs: np.ndarray, indices: np.ndarray) -> np.ndarray:
        targets = guided.targets[np.maximum(indices, 0)]
        return judge_lib.target_probability(judge, outputs, requested, targets)

    return judge_prob


def compile_sampler(
    config: Any, model: Model, key: jax.Array, guided: bool = False
) -> Callable[..., Any]:
    """The sampler of ``config.sampling`` compiled ahead of time for eval batches (with
    ``guided``: steered by ``model.guided``, its params ``{'score', 'guidance'}``)."""
    exp = model.exp
    split = parallel.batch_sharding(exp.mesh)
    b, (h, w, c), f = config.eval.batch_size, exp.hr_shape, config.data.downscale

    def spec(*shape: int, dtype: Any = np.float32) -> jax.ShapeDtypeStruct:
        return jax.ShapeDtypeStruct(shape, dtype, sharding=split)

    cond = {'lr_up': spec(b, h, w, c), 'lr': spec(b, h // f, w // f, c)}
    cond.update({k: spec(b, h, w, c) for k in model.mean.keys})
    guide = model.guided.guide if guided else None
    fn, params = exp.make_sampler(config.sampling, guide), model.params
    if guided:
        params = guidance_lib.sampler_params(model.params, model.guided.variables)
        cond[guidance_lib.ATTRIBUTES] = spec(b, len(guide.attributes), dtype=np.int32)
    return fn.lower(params, key, cond, spec(b, dtype=np.int32)).compile()


def sampler_key(config: Any, guided: bool) -> str:
    """What a compiled eval sampler depends on: the sampler settings, the batch size and
    whether it is guided (the guidance scale and classifier variables are its arguments)."""
    settings = {'sampling': config.sampling.to_dict(), 'batch': config.eval.batch_size}
    return json.dumps({**settings, 'guided': guided}, sort_keys=True, default=str)


def make_sample_fn(
    config: Any, model: Model, name: str, guided: bool = False
) -> Callable[[dict[str, np.ndarray]], tuple[np.ndarray, np.ndarray]]:
    """``sample(local_batch) -> (sr, nfe)`` for the global batch, on every host.

    ``sr`` ``[B, H, W, C]`` in [0, 1] (clipped), ``nfe`` ``[B]`` network evaluations. Compiled
    here, then hosts wait for each other (``name``), so that they enter collectives together.
    ``guided``: classifier guidance (``model.guided``), each image steered to its targets.
    ``sample(local, draw, draws)`` draws sample ``draw`` of ``draws`` per image (sample id
    ``index * draws + draw``; the default is ``sr``'s sample, id ``index``).
    """
    exp = model.exp
    scaler = datasets.get_data_scaler(config.data.centered)
    inverse = datasets.get_data_inverse_scaler(config.data.centered)
    key = jax.random.PRNGKey(config.eval.seed)
    cache = sampler_key(config, guided)
    if cache not in model.compiled:
        model.compiled[cache] = compile_sampler(config, model, key, guided)
    fn = model.compiled[cache]
    params = model.params
    if guided:
        params = guidance_lib.sampler_params(model.params, model.guided.variables)
    parallel.barrier(f'eval_sampler_{name}{"_guided" if guided else ""}')

    def sample(
        local: dict[str, np.ndarray], draw: int = 0, draws: int = 1
    ) -> tuple[np.ndarray, np.ndarray]:
        index = np.maximum(local['index'], 0).astype(np.int32)  # Padding rows: any key.
        ids = (index * draws + draw).astype(np.int32)
        rows = datasets.model_cond(local, scaler)
        if guided:
            rows[guidance_lib.ATTRIBUTES] = model.guided.targets[index]
        cond = parallel.shard_batch(rows, exp.mesh)
        ids = parallel.shard_batch({'ids': ids}, exp.mesh)['ids']
        x, info = fn(params, key, cond, ids)
        sampling.check_finished(jax.device_get(info), config.sampling)
        x = np.asarray(multihost_utils.process_allgather(x, tiled=True))
        nfe = np.asarray(jax.device_get(info['nfe']), np.float64).reshape(-1)
        nfe = nfe if nfe.shape == (len(x),) else np.full(len(x), nfe.mean())
        return np.clip(inverse(x), 0.0, 1.0), nfe

    return sample


def make_sample_fns(
    config: Any, model: Model, name: str, methods: Sequence[str]
) -> dict[str, Callable[[dict[str, np.ndarray]], tuple]]:
    """The samplers of the sampled ``methods`` (``sr`` and ``posterior_mean`` share one when
    ``eval.posterior_temperature`` is the sampling temperature)."""
    fns: dict[str, Callable] = {}
    if 'sr' in methods:
        fns['sr'] = make_sample_fn(config, model, name)
    if set(POSTERIOR) & set(methods):
        posterior = with_value(config, 'sampling.temperature', config.eval.posterior_temperature)
        shared = posterior.sampling.temperature == config.sampling.temperature and 'sr' in fns
        unguided = fns['sr'] if shared else make_sample_fn(posterior, model, name)
        draws = once_per_batch(posterior_mean_fn(unguided, config.eval.posterior_samples))
        if 'posterior_mean' in methods:
            fns['posterior_mean'] = draws
        if 'embedding_mean' in methods:  # (The same draws: sampled once for both.)
            fns['embedding_mean'] = first_of_draws(draws)
    if 'srdg' in methods:
        fns['srdg'] = make_sample_fn(config, model, name, guided=True)
    return fns


def posterior_mean_fn(sample: Callable, draws: int) -> Callable[[dict[str, np.ndarray]], tuple]:
    """``local -> (mean [B, H, W, C], nfe [B] of all draws, samples [B, K, H, W, C])``."""
    uncertainty.check_num_samples(draws, 'the posterior_mean method', 'eval.posterior_samples')

    def posterior(local: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        runs = [sample(local, k, draws) for k in range(draws)]
        samples = np.stack([x for x, _ in runs], axis=1)
        return samples.mean(axis=1), np.sum([n for _, n in runs], axis=0), samples

    return posterior


def first_of_draws(draws: Callable) -> Callable[[dict[str, np.ndarray]], tuple]:
    """``embedding_mean``'s sampler: the images are sample 0 of ``draws`` (its identity comes
    from all of them: :func:`add_embedding_mean`)."""

    def sample(local: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        _, nfe, samples = draws(local)
        return samples[:, 0], nfe, samples

    return sample


def once_per_batch(fn: Callable[[dict], Any]) -> Callable[[dict], Any]:
    """``fn`` that computes once per batch (the same ``local`` object) for its several callers:
    posterior_mean and embedding_mean share their K draws."""
    last: dict[str, Any] = {}

    def cached(local: dict) -> Any:
        if last.get('local') is not local:
            last.update(local=local, value=fn(local))
        return last['value']

    return cached


def add_posterior_figures(
    records: dict[int, dict], batch: dict[str, np.ndarray], rows: list[int], sampled: dict,
    embedders: dict[str, Any],
) -> None:  # fmt: skip
    """What the K draws add: posterior_mean's stability, embedding_mean's identity."""
    if 'posterior_mean' in sampled:
        add_stability(records, batch, rows, sampled['posterior_mean'][2], embedders)
    if 'embedding_mean' in sampled:
        add_embedding_mean(records, batch, rows, sampled['embedding_mean'][2], embedders)


def add_embedding_mean(
    records: dict[int, dict], batch: dict[str, np.ndarray], rows: list[int], samples: np.ndarray,
    embedders: dict[str, Any],
) -> None:  # fmt: skip
    """Replaces each recogniser's ``emb`` and ``cs`` of ``embedding_mean`` by those of the
    normalised mean of the K samples' embeddings, every sample cut with the HR's transform."""
    from evaluation.face import l2_normalize

    for name, embedder in embedders.items():
        key = lambda k: report.face_key(k, name)  # noqa: B023
        for r in rows:
            index = int(batch['index'][r])
            alignment = embedder.align(
                to_rgb(batch['hr'][r])[None], names=[f'dataset index {index}']
            )
            cut = alignment.take(np.zeros(len(samples[r]) + 1, int))
            images = np.concatenate([to_rgb(samples[r]), to_rgb(batch['hr'][r])[None]])
            feats = embedder.embed(embedder.apply_alignment(images, cut))
            centre = l2_normalize(feats[:-1].mean(axis=0, keepdims=True))[0]
            values = records[index]['methods']['embedding_mean']
            values[key('emb')] = report.encode_embedding(centre)
            values[key('cs')] = float(centre @ feats[-1])


def add_stability(
    records: dict[int, dict], batch: dict[str, np.ndarray], rows: list[int], samples: np.ndarray,
    embedders: dict[str, Any],
) -> None:  # fmt: skip
    """Adds the samples' mean pixel std and each recogniser's identity stability
    (``pairwise_cos``, ``to_mean_cos`` by :func:`report.face_key`), cut with the HR's transform
    as every face metric, to each record's ``posterior_mean``."""
    for r in rows:
        index = int(batch['index'][r])
        values = records[index]['methods']['posterior_mean']
        values['std_mean'] = float(np.std(samples[r], axis=0).mean())
        for name, embedder in embedders.items():
            figures = uncertainty.identity_stability(
                to_rgb(samples[r]), to_rgb(samples[r].mean(0)), embedder,
                reference=to_rgb(batch['hr'][r]), name=f'dataset index {index}')  # fmt: skip
            for k in ('pairwise_cos', 'to_mean_cos'):
                values[report.face_key(k, name)] = figures[k]


def make_metric_fns(ecfg: Any) -> MetricFns:
    """LPIPS (``eval.lpips``, ``None`` if off) and the recognisers of ``eval.face`` ({} if
    off)."""
    from evaluation.face import get_embedders
    from evaluation.lpips import make_lpips

    return MetricFns(
        lpips=make_lpips(ecfg.lpips) if ecfg.lpips else None,
        embedders=get_embedders(ecfg.face, 'config.eval.face'),
    )


# ----------------------------------------------------------------------------- report


def write_report(
    out: Path,
    name: str,
    records: list[dict],
    methods: Sequence[str],
    settings: dict[str, Any],
    config: Any,
    pairs: dict[str, np.ndarray] | None = None,
) -> dict[str, Any]:
    """metrics.json, metrics.csv, table.md and the plots from the per-image records.

    ``pairs`` (:func:`pair_list`) adds LFW pair verification and ``roc_lfw.png``.
    """
    ecfg = config.eval
    summary = report.summarize_records(records, methods, ecfg, pairs)
    metrics = {
        'name': name,
        'settings': settings,
        **summary,
        'per_image': report.per_image_rows(records, methods),
    }
    report.write_json(out / 'metrics.json', metrics)
    report.write_csv(out / 'metrics.csv', metrics['per_image'], summary)
    caption = report.table_caption(name, summary, config)
    table = report.markdown_table(summary, ecfg, caption)
    report.atomic_write_text(out / 'table.md', table)
    if report.has_protocol(summary, 'verification'):  # (A panel per recogniser.)
        report.plot_roc(out / 'roc.png', summary, ecfg.far_targets)
    if report.has_protocol(summary, 'identification'):
        report.plot_cmc(out / 'cmc.png', summary)
    if report.has_protocol(summary, report.PAIRS_KEY):
        report.plot_pair_roc(out / 'roc_lfw.png', summary, ecfg.far_targets)
    logging.info('eval %s:\n%s', name, table)
    return metrics


# ----------------------------------------------------------------------------- driver


def pending(
    batch: dict[str, np.ndarray], records: dict[int, dict], methods: Sequence[str], limit: int
) -> tuple[list[int], list[str]]:
    """The rows of ``batch`` still to record (real, within ``limit``, missing a method) and
    the methods any of them misses."""
    todo = lambda r: missing(records.get(int(batch['index'][r])), methods)
    rows = [r for r in range(len(batch['index'])) if batch['mask'][r] and batch['index'][r] < limit]
    rows = [r for r in rows if todo(r)]
    return rows, [m for m in methods if any(m in todo(r) for r in rows)]


def sample_timed(
    sample_fns: dict[str, Callable], need: Sequence[str], local: dict, batch_size: int
) -> tuple[dict[str, tuple], dict[str, dict[str, np.ndarray]]]:
    """The needed samplers' outputs for the batch, and each one's cost per image: NFE and
    seconds (its wall time over the batch size)."""
    sampled, cost = {}, {}
    for m in (m for m in sample_fns if m in need):
        began = time.perf_counter()
        sampled[m] = sample_fns[m](local)
        seconds = np.full(batch_size, (time.perf_counter() - began) / batch_size)
        cost[m] = {'nfe': sampled[m][1], 'seconds': seconds}
    return sampled, cost


def recorded(
    records: dict[int, dict], limit: int, methods: Sequence[str], path: Path
) -> list[dict]:
    """The records of images ``0..limit-1`` with every method, or an error naming ``path`` and
    the first images without (the report is of exactly those images)."""
    absent = [i for i in range(limit) if missing(records.get(i), methods)]
    if absent:
        raise RuntimeError(f'{path}: no records for images {absent[:10]}')
    return [records[i] for i in range(limit)]


def evaluate(
    config: Any,
    workdir: str | Path,
    methods: Sequence[str],
    model: Model | None,
    fns: MetricFns,
    name: str = '',
) -> dict[str, Any]:
    """Evaluates ``methods`` into ``W/eval/<name>``, resuming its records; metrics.json's dict.

    Non-chief hosts sample their share and return ``{}``.
    """
    # ----- Set-up -----
    ecfg, chief = config.eval, jax.process_index() == 0
    step = model.step if model is not None else None
    name = name or ecfg.name or eval_name(config, methods, step)
    out = eval_root(config, workdir) / name
    mean = load_mean(config, workdir, methods, model)
    lr = lr_config(config)  # The batches, metrics and report: the eval's LR.
    settings = eval_settings(lr, methods, step, mean)
    check_settings(out, settings, write=chief)
    records = load_records(out / RECORDS)
    size = datasets.dataset_size(config.data, ecfg.split)
    limit = min(size, ecfg.max_images) if ecfg.max_images > 0 else size
    pairs = pair_list(config, size)
    todo = [i for i in range(limit) if missing(records.get(i), methods)]
    sample_fns = make_sample_fns(config, model, name, methods) if todo else {}
    if not chief and not sample_fns:
        return {}
    hosts = jax.process_count() if sample_fns else 1  # Baselines: chief alone.
    batch_size = ecfg.batch_size
    start, stop = (todo[0] // batch_size, -(-limit // batch_size)) if todo else (0, 0)
    data = eval_batches(lr, start, hosts) if todo else iter(())
    progress = Progress(limit, limit - len(todo), 'images')
    logging.info('eval %s: %d of %d images to do (%s)', name, len(todo), limit, ', '.join(methods))

    # ----- Loop -----
    for batch_step, local in zip(range(start, stop), data, strict=False):
        local = {k: np.asarray(v) for k, v in mean(local).items()}
        batch = multihost_utils.process_allgather(local, tiled=True) if hosts > 1 else local
        rows, need = pending(batch, records, methods, limit)
        sampled, cost = sample_timed(sample_fns, need, local, batch_size)
        if not chief or not rows:
            continue
        outputs = batch_outputs(batch, sampled, need)
        if batch_step == 0:  # Before the records: a recorded first batch implies a grid.
            sr = next((outputs[m] for m in ('sr', 'srdg') if m in outputs), None)
            write_grid(out / 'grid.png', batch, sr, rows, ecfg.grid_images)
        new = batch_records(batch, outputs, rows, fns, lr, cost)
        add_posterior_figures(new, batch, rows, sampled, fns.embedders)
        merge_records(records, new)
        save_records(out / RECORDS, records)
        progress.update(progress.done + len(rows))
        logging.info('eval %s: %s', name, progress.line())

    # ----- Report -----
    if not chief:
        return {}
    kept = recorded(records, limit, methods, out / RECORDS)
    return write_report(out, name, kept, methods, settings, lr, pairs)


# ----------------------------------------------------------------------------- sweep


def with_value(config: Any, key: str, value: Any) -> Any:
    """A copy of ``config`` with field ``key`` (dotted, e.g. ``sampling.snr``) set to ``value``."""
    point = copy.deepcopy(config)
    *parents, leaf = key.split('.')
    node = point
    for part in parents:
        node = node[part]
    if leaf not in node:
        raise KeyError(f'config.eval.sweep_key={key!r}: config has no field {key}')
    node[leaf] = value
    return point


def pearson(a: Sequence[float], b: Sequence[float]) -> float:
    """Pearson correlation over the pairs where both are finite; ``nan`` if undefined."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    keep = np.isfinite(a) & np.isfinite(b)
    a, b = a[keep] - a[keep].mean(), b[keep] - b[keep].mean()
    denom = np.sqrt(np.sum(a * a) * np.sum(b * b))
    return float(np.sum(a * b) / denom) if keep.sum() >= 2 and denom > 0 else float('nan')


def _sweep_levels(baselines: dict | None, names: Sequence[str]) -> dict[str, dict[str, float]]:
    """Each once-evaluated method's mean PSNR and CS per recogniser (the plot's reference
    lines)."""
    if not baselines:
        return {}
    return {
        metric: {m: s[metric]['mean'] for m, s in baselines['methods'].items() if metric in s}
        for metric in ('psnr', *(report.face_key('cs', n) for n in names))
    }


def _sweep_protocols(results: Sequence[dict], method: str, names: Sequence[str]) -> dict:
    """AUC and Rank-1 per recogniser, and the attribute probabilities, of ``method`` per
    swept value."""

    def get(result: dict, *path: str) -> Any:
        node = result['methods'][method]
        for part in path:
            node = (node or {}).get(part)
        return node

    out = {}
    for n in names:
        ver, ide = report.face_key('verification', n), report.face_key('identification', n)
        out[report.face_key('auc', n)] = [get(r, ver, 'auc') for r in results]
        out[report.face_key('rank1', n)] = [get(r, ide, 'rank', '1') for r in results]
    for key in ('attr_prob', 'judge_prob'):
        out[key] = [get(r, key, 'mean') for r in results]
    return out


def sweep_summary(
    key: str,
    values: Sequence[Any],
    results: Sequence[dict],
    baselines: dict | None,
    method: str = 'sr',
) -> dict[str, Any]:
    """PSNR and CS of ``method`` per value, their correlations, the face protocols and
    attribute probabilities per value, and the levels of the methods evaluated once. CS, AUC
    and Rank-1 are per recogniser (:func:`report.face_key`); the correlations and the
    per-image points are of the first one."""

    def column(result: dict, metric: str) -> list[float]:
        rows = result['per_image']
        return [row.get(metric, float('nan')) for row in rows if row['method'] == method]

    def stat(metric: str, which: str) -> list[float]:
        return [(r['methods'][method].get(metric) or {}).get(which, float('nan')) for r in results]

    names = results[0].get('recognisers') or [report.PRIMARY_RECOGNISER]
    cs_keys = [report.face_key('cs', n) for n in names]
    cs = cs_keys[0]
    per_image = [{'psnr': column(r, 'psnr'), cs: column(r, cs)} for r in results]
    return {
        'key': key,
        'method': method,
        'values': list(values),
        'names': [r['name'] for r in results],
        'recognisers': list(names),
        **{m: {'mean': stat(m, 'mean'), 'std': stat(m, 'std')} for m in ('psnr', 'ssim')},
        **{k: {'mean': stat(k, 'mean'), 'std': stat(k, 'std')} for k in cs_keys},
        'nfe': [r['methods'][method].get('nfe') for r in results],
        **_sweep_protocols(results, method, names),
        'correlation': {
            'recogniser': names[0],
            'means': pearson(stat('psnr', 'mean'), stat(cs, 'mean')),
            'per_image': pearson(
                sum((p['psnr'] for p in per_image), []), sum((p[cs] for p in per_image), [])
            ),
        },
        'baselines': _sweep_levels(baselines, names),
        'per_image': per_image,
    }


# Sweepable fields: sampler settings (every sampled method per value), and the guidance scale h
# (srdg per value; the unguided sr is evaluated once, with the baselines, as h's reference).
SWEEP_KEYS = ('sampling.', 'guidance.scale')


def sweep_plan(key: str, methods: Sequence[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``(per_value, once)``: the methods evaluated at each swept value and those evaluated
    once (the baselines, and ``sr`` when h is swept)."""
    if not key.startswith(SWEEP_KEYS[0]) and key != SWEEP_KEYS[1]:
        raise ValueError(f'config.eval.sweep_key={key!r}: give "sampling.<field>" or '
                         f'"guidance.scale"')  # fmt: skip
    per_value = ('srdg',) if key == SWEEP_KEYS[1] else tuple(m for m in methods if m in SAMPLED)
    if not set(per_value) & set(methods):
        raise ValueError(
            f'config.eval.sweep_key={key!r} needs the sampled method(s) {per_value} in '
            f'eval.methods (srdg: config.guidance.attributes); got {tuple(methods)}'
        )
    return per_value, tuple(m for m in methods if m not in per_value)


def point_model(config: Any, model: Model) -> Model:
    """``model`` for one swept config: the guidance variables of its h (the compiled samplers,
    which take h as an argument, are shared)."""
    if model.guided is None:
        return model
    return dataclasses.replace(model, guided=load_guided(config, model.exp))


def run_sweep(
    config: Any, workdir: str | Path, methods: Sequence[str], model: Model | None, fns: MetricFns
) -> dict[str, Any]:
    """Evaluates the methods that depend on ``eval.sweep_key`` once per ``eval.sweep_values``
    and the others once (module doc); writes ``sweep.json``, ``sweep.md`` and ``sweep.png``."""
    ecfg = config.eval
    key, values = ecfg.sweep_key, list(ecfg.sweep_values)
    per_value, once = sweep_plan(key, methods)
    if not values or model is None:
        raise ValueError(f'a sweep needs eval.sweep_values and a model; got {values}')
    points = [with_value(config, key, v) for v in values]
    leaf = key.rsplit('.', 1)[-1]
    names = [ecfg.name or eval_name(p, per_value, model.step) for p in points]
    if len(set(names)) < len(names):  # The swept field is not part of the derived name.
        names = [f'{n}-{leaf}{v}' for n, v in zip(names, values, strict=True)]
    results = [
        evaluate(p, workdir, per_value, point_model(p, model), fns, n)
        for p, n in zip(points, names, strict=True)
    ]
    base = evaluate(config, workdir, once, model, fns) if once else None
    if jax.process_index() != 0:
        return {}
    sweep = sweep_summary(key, values, results, base, per_value[0])
    base_name = ecfg.name or eval_name(config, per_value, model.step)
    out = eval_root(config, workdir) / f'{base_name}-sweep-{key}'
    out.mkdir(parents=True, exist_ok=True)
    report.write_json(out / 'sweep.json', sweep)
    report.write_text(out / 'sweep.md', report.sweep_table(sweep, base))
    report.plot_sweep(out / 'sweep.png', sweep)
    logging.info('eval sweep of %s over %s:\n%s', key, values, report.sweep_table(sweep, base))
    return sweep


def run(config: Any, workdir: str | Path, devices: Any = None) -> dict[str, Any]:
    """``--mode eval`` (see the module doc); returns metrics.json's (or sweep.json's) content.

    ``devices`` (default: all devices of all hosts) is the sampling mesh.
    """
    methods = with_guidance(parse_methods(config.eval.methods), config)
    sampled = bool(set(SAMPLED) & set(methods))
    if sampled:  # Baselines are not trained: any split measures them fairly.
        datasets.check_held_out(config.data, config.eval.split)
    model = load_model(config, workdir, devices) if sampled else None
    fns = make_metric_fns(config.eval)
    if model is not None and model.guided is not None:
        fns = dataclasses.replace(
            fns,
            attributes=attribute_fn(config, model.guided),
            judge=judge_fn(config, model.guided),
        )
    if config.eval.sweep_key:
        return run_sweep(config, workdir, methods, model, fns)
    return evaluate(config, workdir, methods, model, fns)
