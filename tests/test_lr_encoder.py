"""The LR encoder (RRDB features into NCSN++), its regression head and L1 stage, and a learned
mu(y) for ECDP (``mean_model``)."""

from __future__ import annotations

import json
import shutil

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import datasets
import experiment
import losses
import mean_model
import modes
import residual_stats
import runs
from configs import default
from configs.ecdp import demo
from evaluation import image_metrics as im
from evaluation import run as evaluation_run
from models import build_model
from models.wrappers import init_params, make_regress_fn, network_input

HR, LR = (16, 16, 3), (4, 4, 3)


def _net(encoder_nf: int = 8):
    return build_model(
        'ncsnpp',
        nf=16,
        ch_mult=(1, 2),
        num_res_blocks=1,
        attn_resolutions=(),
        out_channels=6,
        lr_encoder_nf=encoder_nf,
        lr_encoder_blocks=1,
        lr_encoder_growth=8,
    )


def _random_params(model, key=0):
    """Initial parameters plus noise: every layer (zero-initialised ones too) does something."""
    params = init_params(model, jax.random.key(key), HR, lr_shape=LR)
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(key + 1), len(leaves))
    noisy = [p + 0.05 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys, strict=True)]
    return jax.tree.unflatten(tree, noisy)


def _cond(key=2, batch=2):
    lr = jax.random.uniform(jax.random.key(key), (batch, *LR))
    return {'lr': lr, 'lr_up': jax.image.resize(lr, (batch, *HR), 'bicubic')}


def _apply(model, params, cond, u=None):
    u = jnp.zeros_like(cond['lr_up']) if u is None else u
    t = jnp.full((u.shape[0],), 0.5)
    return model.apply({'params': params}, network_input(u, cond), t, lr=cond.get('lr'))


def test_regression_head_starts_at_bicubic_and_features_reach_the_unet():
    model, cond = _net(), _cond()
    params = init_params(model, jax.random.key(0), HR, lr_shape=LR)
    out = _apply(model, params, cond)
    assert out.shape == (2, *HR[:2], 9) and model.aux_heads == ('regression',)
    # The zero-initialised last convolution: the estimate is exactly bicubic upsampling.
    bicubic = jax.image.resize(cond['lr'], (2, *HR), 'bicubic')
    np.testing.assert_allclose(out[..., 6:], bicubic, atol=1e-6)
    # Trained (random) weights: another LR image changes the U-Net's heads, for a fixed state.
    params, other = _random_params(model), _cond(key=3)
    other['lr_up'] = cond['lr_up']  # Only the LR image the encoder reads differs.
    heads = lambda c: _apply(model, params, c)[..., :6]
    assert float(jnp.abs(heads(cond) - heads(other)).max()) > 1e-3
    with pytest.raises(ValueError, match='needs the LR image'):
        _apply(model, params, {'lr_up': cond['lr_up']})


def test_without_encoder_the_lr_image_is_ignored():
    model = _net(encoder_nf=0)
    params = init_params(model, jax.random.key(0), HR)
    cond, other = _cond(), _cond(key=3)
    other['lr_up'] = cond['lr_up']
    assert model.aux_heads == ()
    np.testing.assert_array_equal(_apply(model, params, cond), _apply(model, params, other))


def test_regress_fn_is_the_last_output_and_skips_the_unet():
    model, cond = _net(), _cond()
    params = _random_params(model)
    regress = jax.jit(lambda p, c: make_regress_fn(model, p)(c))
    full = jax.jit(lambda p, c: _apply(model, p, c))
    np.testing.assert_allclose(regress(params, cond), full(params, cond)[..., 6:], atol=1e-5)
    # The U-Net is not evaluated, forward or backward: a fraction of one network evaluation.
    flops = lambda fn: fn.lower(params, cond).compile().cost_analysis()['flops']
    grad = jax.jit(jax.grad(lambda p, c: jnp.sum(make_regress_fn(model, p)(c))))
    assert flops(grad) < 0.5 * flops(full), (flops(grad), flops(full))
    with pytest.raises(ValueError, match='no LR regression head'):
        make_regress_fn(_net(encoder_nf=0), params)


def _config(**training):
    config = default.get_config()
    config.unlock()
    config.model.update(
        nf=16,
        ch_mult=(1, 2),
        num_res_blocks=1,
        attn_resolutions=(),
        out_channels=6,
        lr_encoder_nf=8,
        lr_encoder_blocks=1,
        lr_encoder_growth=8,
        progressive_input='none',
    )
    config.sde.name, config.score.parametrization = 'vpsde', 'hybrid'
    config.training.update(loss='heads', **training)
    return config


def test_regression_loss_is_l1_and_trains_only_the_encoder():
    config = _config(diffusion_weight=0.0, regression_weight=2.0)
    model = build_model('ncsnpp', **{k: v for k, v in config.model.items() if k != 'name'})
    params, cond = _random_params(model), _cond()
    hr = jax.random.uniform(jax.random.key(5), (2, *HR))
    batch = {'hr': hr, **cond}
    loss_fn = losses.make_loss_fn(config, None, model)
    value, grads = jax.value_and_grad(loss_fn)(params, batch, jax.random.key(0))
    expected = 2.0 * np.mean(np.abs(np.asarray(_apply(model, params, cond)[..., 6:] - hr)))
    np.testing.assert_allclose(float(value), expected, rtol=1e-5)
    branch = ('lr_encoder', 'lr_regression')
    for name, sub in grads.items():
        size = max(float(jnp.abs(g).max()) for g in jax.tree.leaves(sub))
        assert (size > 0) == (name in branch), (name, size)


def test_all_loss_weights_zero_is_refused():
    config = _config(diffusion_weight=0.0, regression_weight=0.0)
    with pytest.raises(ValueError, match='all 0'):
        losses.make_loss_fn(config, None, _net())


def run_mode(config, workdir, mode):
    return modes.MODES.get(mode)(config, workdir)


def _overrides(config, **fields):
    config.unlock()
    config.training.update(n_iters=2, log_freq=1, checkpoint_freq=2, batch_size=8)
    config.eval.update(
        max_images=8, batch_size=8, face=(), lpips='', methods=('sr', 'mean', 'bicubic', 'hr')
    )
    config.sampling.update(method='dpm2m', num_steps=3, schedule='logsnr')
    for key, value in fields.items():
        section, name = key.split('.')
        config[section][name] = value
    return config


@pytest.fixture(scope='module')
def two_stages(tmp_path_factory, celeba_id128):
    """The L1 stage (R), then ECDP around its frozen regression (W): ``(config, R, W)``."""
    tmp = tmp_path_factory.mktemp('stages')
    data = str(celeba_id128)
    stage1, stage2 = tmp / 'regress', tmp / 'ecdp'
    run_mode(_overrides(demo.get_config('smoke_regress'), **{'data.path': data}), stage1, 'train')
    config = _overrides(
        demo.get_config('smoke_encoder'),
        **{'data.path': data, 'sde.mean_model': str(stage1), 'training.init_from': str(stage1)},
    )
    residual_stats.run(config, stage2)
    run_mode(config, stage2, 'train')
    return config, stage1, stage2


def test_two_stages_and_a_learned_mean_on_real_faces(two_stages):
    """L1 stage, then ECDP around its frozen regression: the statistics, the warm start, the
    'mean' eval baseline and the refusals all agree with direct computations."""
    config, stage1, stage2 = two_stages
    mean = mean_model.load(config, workdir=stage2)
    assert mean.keys == ('lr_mu',) and mean.step == 2
    # The residual statistics are of x - mu(y), mu(y) the regression (checked on one batch).
    batch = next(datasets.get_dataset(config.data, 'train', 8, train=False))
    scaler = datasets.get_data_scaler(config.data.centered)
    regress = make_regress_fn(experiment.build_model(config), mean.params)
    direct = regress({k: jnp.asarray(scaler(batch[k])) for k in ('lr', 'lr_up')})
    np.testing.assert_allclose(scaler(np.asarray(mean(batch)['lr_mu'])), direct, atol=1e-5)
    stats = json.loads(runs.Run.open(stage2).stats_path(config).read_text())
    assert stats['mean_model'] == str(stage1) and stats['mean_model_step'] == 2
    metrics = evaluation_run.run(config, stage2)
    # The 'mean' baseline's PSNR is that of mu(y) itself.
    (records_file,) = (stage2 / 'eval').glob('*/records.jsonl')
    records = [json.loads(line) for line in records_file.open()]
    first = next(datasets.get_dataset(config.data, 'test', 8, train=False))
    mu = np.asarray(mean(first)['lr_mu'])
    psnr = np.asarray(im.psnr(np.clip(mu, 0, 1), first['hr']))
    by_index = {r['index']: r for r in records}
    got = [by_index[int(i)]['methods']['mean']['psnr'] for i in first['index']]
    np.testing.assert_allclose(got, psnr, rtol=1e-4)
    assert 'mean' in json.dumps(metrics)
    # The eval records which mean (folder and step) and which compute dtype made its records.
    (settings_file,) = (stage2 / 'eval').glob('*/settings.json')
    settings = json.loads(settings_file.read_text())
    assert settings['mean_model'] == {'folder': str(stage1), 'step': 2}
    assert settings['compute_dtype'] == 'float32'
    # Statistics made around another mean are refused, naming the field.
    other = ml_collections.ConfigDict(config.to_dict())
    other.sde.mean_model = ''
    with pytest.raises(ValueError, match='sde.mean_model'):
        runs.Run.open(stage2).read_stats(other)


def test_mean_model_refuses_runs_without_an_encoder_or_with_other_data(tmp_path):
    """``sde.mean_model`` must name a run with an LR encoder, trained on the same LR geometry;
    the 'mean' eval baseline needs one configured."""
    config = demo.get_config('smoke_encoder')
    config.unlock()
    run = demo.get_config('smoke_encoder')
    run.model.lr_encoder_nf = 0
    (tmp_path / 'config.json').write_text(run.to_json_best_effort())
    config.sde.mean_model = str(tmp_path)
    with pytest.raises(ValueError, match='has no LR encoder'):
        mean_model.load(config)
    run = demo.get_config('smoke_encoder')
    run.data.downscale = 2
    (tmp_path / 'config.json').write_text(run.to_json_best_effort())
    with pytest.raises(ValueError, match='data.downscale=2'):
        mean_model.load(config)
    with pytest.raises(FileNotFoundError, match='no run config'):
        mean_model.read_run_config(tmp_path / 'absent')
    # A run recorded before a field existed reads with its migration (what the old code did)...
    record = json.loads(demo.get_config('smoke_encoder').to_json_best_effort())
    del record['compute']['conv_grads']
    (tmp_path / 'config.json').write_text(json.dumps(record))
    assert mean_model.read_run_config(tmp_path).compute.conv_grads == 'lax'
    # ... a missing field without a migration is refused, naming it, never given a default.
    del record['model']['nf'], record['sde']['beta_max']
    (tmp_path / 'config.json').write_text(json.dumps(record))
    with pytest.raises(ValueError, match=r'config.json has no value for config.model.nf, '
                       r'config.sde.beta_max: .*no migration'):  # fmt: skip
        mean_model.read_run_config(tmp_path)
    record = json.loads(demo.get_config('smoke_encoder').to_json_best_effort())
    record['compute']['speed'] = 'max'
    (tmp_path / 'config.json').write_text(json.dumps(record))
    with pytest.raises(ValueError, match="config.json:compute: unknown config field 'speed'"):
        mean_model.read_run_config(tmp_path)
    config.sde.mean_model = ''
    with pytest.raises(ValueError, match="'mean' but config.sde.mean_model is not set"):
        evaluation_run.load_mean(config, tmp_path, ('mean', 'bicubic'), None)


def test_a_mean_that_trains_on_is_pinned_to_the_step_of_the_statistics(two_stages, tmp_path):
    """The residual statistics were made around step 2 of R; R trains on to step 3: train, sr
    and eval of W keep using step 2, and once step 2 is gone the run stops naming it."""
    config, stage1, stage2 = two_stages
    moved = tmp_path / 'regress'
    shutil.copytree(stage1, moved)
    regress = _overrides(demo.get_config('smoke_regress'), **{'data.path': config.data.path})
    regress.training.n_iters = 3
    run_mode(regress, moved, 'train')
    work = tmp_path / 'ecdp'
    work.mkdir()
    stats = json.loads((stage2 / runs.STATS_FILE).read_text())
    (work / runs.STATS_FILE).write_text(json.dumps({**stats, 'mean_model': str(moved)}))
    config = ml_collections.ConfigDict(config.to_dict())
    config.sde.mean_model = str(moved)
    assert mean_model.load(config).step == 3  # --mode stats takes the latest...
    assert mean_model.load(config, workdir=work).step == 2  # ... every later use the pinned.
    shutil.rmtree(moved / 'checkpoints' / '2')
    with pytest.raises(Exception, match=r'no checkpoint 2 in .*regress/checkpoints'):
        mean_model.load(config, workdir=work)


def test_train_classifier_sees_the_learned_mean(two_stages, tmp_path, celeba_id128):
    """``--mode train_classifier`` on an ECDP run around a learned mu(y): the SDE's frame reads
    ``lr_mu``, which the classifier's batches now carry (it was a KeyError)."""
    import classifier_train

    config, _, stage2 = two_stages
    shutil.copy(stage2 / runs.STATS_FILE, tmp_path / runs.STATS_FILE)
    files = [line.split(',')[0] for line in (celeba_id128 / 'faces.csv').read_text().split()[1:]]
    labels = tmp_path / 'labels.csv'
    labels.write_text('file,parity\n' + ''.join(f'{f},{i % 2}\n' for i, f in enumerate(files)))
    config = ml_collections.ConfigDict(config.to_dict())
    config.classifier_training.update(
        classifier='tiny_densenet', attribute='parity', labels_csv=str(labels), batch_size=8,
        n_iters=2, log_freq=1, checkpoint_freq=2, eval_times=2, eval_images=8,
    )  # fmt: skip
    result = classifier_train.run(config, tmp_path)
    assert result['n_images'] == 8 and len(result['accuracy']) == 2
    batch = classifier_train.condition({'lr_up': 1, 'lr_mu': 2, 'hr': 3})
    assert batch == {'lr_up': 1, 'lr_mu': 2}


def test_export_packages_the_run_and_its_mean(two_stages, tmp_path, monkeypatch):
    """``--mode export`` of W: float16 weights equal to W's rounded, the mean pruned to the
    regression branch, paths resolved inside the package, sr reads it, and weights of another
    shape are refused naming the file and the array."""
    import export

    config, _, stage2 = two_stages
    config = ml_collections.ConfigDict(config.to_dict())
    folder = tmp_path / 'pkg'
    config.export.update(output=str(folder), check_images=4)
    record = export.run(config, stage2)
    assert record['check']['max_output_change'] <= export.MAX_OUTPUT_CHANGE + 1e-6
    assert record['mean']['scopes'] == ['lr_encoder', 'lr_regression']
    packaged = runs.Run.open(folder).config()
    assert packaged.sde.mean_model == str((folder / 'mean').absolute())
    # The package records every field of the model: all but the run options.
    recorded = runs.flatten(json.loads((folder / runs.CONFIG_FILE).read_text()))
    fields = runs.flatten(default.get_config().to_dict())
    assert {k for k in fields if not runs.matches(k, runs.RUN_OPTIONS)} == set(recorded)
    exp = experiment.build(config, None, stage2)
    ours, step = exp.load_ema_params(stage2)
    theirs, exported = experiment.build(packaged, None, folder).load_ema_params(folder)
    assert exported == step
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs), strict=True):
        np.testing.assert_array_equal(np.asarray(a).astype(np.float16).astype(np.float32), b)
    mean = mean_model.load(packaged, workdir=folder)
    assert set(mean.params) == {'lr_encoder', 'lr_regression'} and mean.step == 2
    # A stage may start from the pruned mean (regression + identity): its scopes, the rest fresh.
    import train

    mean_dir = folder / runs.MEAN_DIR
    mean_exp = experiment.build(runs.Run.open(mean_dir).config(), None, mean_dir)
    fresh = mean_exp.init_params(jax.random.key(3))
    state = train.initial_state_from(mean_exp, mean_dir, fresh)
    for scope, sub in state.params.items():
        expected = mean.params[scope] if scope in mean.params else fresh[scope]
        for a, b in zip(jax.tree.leaves(sub), jax.tree.leaves(expected), strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=scope)
    # A model of another SR factor (its regression head has another number of upsampling
    # convolutions) from the package: everything but training.init_fresh's scopes.
    other = ml_collections.ConfigDict(packaged.to_dict())
    other.data.downscale, other.sde.name = 2, 'vpsde'  # (No statistics of its own yet.)
    other_exp = experiment.build(other, None, folder)
    fresh = other_exp.init_params(jax.random.key(4))
    with pytest.raises(Exception, match='does not fit'):
        train.initial_state_from(other_exp, folder, fresh)
    with pytest.raises(ValueError, match="init_fresh: \\['head'\\] are not parameter scopes"):
        train.initial_state_from(other_exp, folder, fresh, ('head',))
    state = train.initial_state_from(other_exp, folder, fresh, ('lr_regression',))
    for scope, sub in state.params.items():
        expected = fresh[scope] if scope == 'lr_regression' else theirs[scope]
        for a, b in zip(jax.tree.leaves(sub), jax.tree.leaves(expected), strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=scope)
    # Weights of another shape: refused, naming the file and the array.
    import flax.serialization
    from flax.traverse_util import flatten_dict, unflatten_dict

    weights = folder / runs.WEIGHTS_FILE
    tree = flax.serialization.msgpack_restore(weights.read_bytes())
    flat = flatten_dict(tree, sep='/')
    name = sorted(k for k in flat if k.startswith('lr_regression'))[0]
    flat[name] = np.zeros(flat[name].shape + (2,), np.float16)
    weights.write_bytes(flax.serialization.msgpack_serialize(unflatten_dict(flat, sep='/')))
    with pytest.raises(Exception, match=rf'ema_params.msgpack does not fit(.|\n)*{name}: shape'):
        experiment.build(packaged, None, folder).load_ema_params(folder)


def _packages(folder):
    """Every folder under ``folder`` that counts as a package, hidden or not."""
    return [p for p in folder.rglob('*') if p.is_dir() and runs.Run.open(p).is_package]


def test_a_refused_or_interrupted_export_leaves_nothing_that_counts_as_a_package(
    two_stages, tmp_path, monkeypatch
):
    """The float16 check refuses, or Ctrl-C lands in the check: no package, hidden or not."""
    import export

    config, _, stage2 = two_stages
    config = ml_collections.ConfigDict(config.to_dict())
    monkeypatch.setattr(export, 'MAX_OUTPUT_CHANGE', -1.0)
    config.export.update(output=str(tmp_path / 'out' / 'refused'), check_images=2)
    with pytest.raises(ValueError, match='change an output by .* export with'):
        export.run(config, stage2)
    assert _packages(tmp_path) == [] and list((tmp_path / 'out').iterdir()) == []

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(export, 'check_package', interrupted)
    with pytest.raises(KeyboardInterrupt):
        export.run(config, stage2)
    assert _packages(tmp_path) == [] and list((tmp_path / 'out').iterdir()) == []


def test_export_refuses_a_run_or_a_folder_that_is_not_a_package(two_stages, tmp_path):
    """Exporting into the run itself, another run, or a folder of other files is refused,
    naming it, before anything is written; the run keeps every file."""
    import export

    config, stage1, stage2 = two_stages
    before = sorted(p.relative_to(stage2) for p in stage2.rglob('*'))
    other = tmp_path / 'mine'
    other.mkdir()
    (other / 'notes.txt').write_text('mine')
    config = ml_collections.ConfigDict(config.to_dict())
    for output, what in ((stage2, 'is the run being exported'), (stage2.parent, 'holds it'),
                         (stage1, 'is a run folder'), (other, 'not a model package')):  # fmt: skip
        config.export.output = str(output)
        with pytest.raises(ValueError, match=f'config.export.output=.*{what}'):
            export.run(config, stage2)
    assert sorted(p.relative_to(stage2) for p in stage2.rglob('*')) == before
    assert (other / 'notes.txt').read_text() == 'mine'
