"""Shipped models (``pretrained/``): choosing one on the command line, and each package
reproducing the PSNR its export recorded."""

from __future__ import annotations

import json

import ml_collections
import pytest

import export
import pretrained
import runs


def test_sr_without_config_uses_the_default_shipped_model(monkeypatch, tmp_path):
    (tmp_path / 'm').mkdir()
    (tmp_path / 'm' / runs.EXPORT_FILE).write_text('{}')
    monkeypatch.setattr(pretrained, 'PRETRAINED_DIR', tmp_path)
    monkeypatch.setattr(pretrained, 'DEFAULT_MODEL', 'm')
    argv = ['main.py', '--mode', 'sr', '--sr.input=x.png']
    assert pretrained.main_flags(argv) == [
        'main.py',
        f'--config={pretrained.CONFIG_FILE}:m',
        f'--workdir={tmp_path / "m"}',
        '--mode',
        'sr',
        '--sr.input=x.png',
    ]
    named = pretrained.main_flags(['main.py', '--mode=sr', '--sr.model', 'm'])
    assert named[1] == f'--config={pretrained.CONFIG_FILE}:m' and '--sr.model' not in named
    # Other modes, and sr with a run, are left alone.
    for argv in (
        ['main.py', '--mode=train'],
        ['main.py', '--mode=sr', '--config=c', '--workdir=w'],
    ):
        assert pretrained.main_flags(argv) == argv


def test_unknown_or_conflicting_model_flags_are_refused(monkeypatch, tmp_path):
    monkeypatch.setattr(pretrained, 'PRETRAINED_DIR', tmp_path)
    with pytest.raises(ValueError, match=r"no shipped model 'nope'.*available: \[\]"):
        pretrained.main_flags(['main.py', '--mode=sr', '--sr.model=nope'])
    with pytest.raises(ValueError, match='without --config and --workdir'):
        pretrained.main_flags(['main.py', '--mode=sr', '--sr.model=m', '--config=c'])


def test_package_paths_resolve_against_the_package_only(tmp_path):
    run = runs.Run.open(tmp_path)
    assert run.resolve('mean') == 'mean'  # A run: as recorded.
    (tmp_path / runs.EXPORT_FILE).write_text('{}')
    assert run.resolve('mean') == str((tmp_path / 'mean').absolute())
    assert run.resolve('/abs/r') == '/abs/r'
    assert run.resolve('') == ''


def test_hidden_folders_are_never_shipped_models(monkeypatch, tmp_path):
    """An export in progress (or killed) is a hidden ``.NAME.partial``: not listed, not picked."""
    for name in ('m', '.m.partial'):
        (tmp_path / name).mkdir()
        (tmp_path / name / runs.EXPORT_FILE).write_text('{}')
    monkeypatch.setattr(pretrained, 'PRETRAINED_DIR', tmp_path)
    assert pretrained.available() == ['m']
    with pytest.raises(ValueError, match=r"no shipped model '.m.partial'"):
        pretrained.package_dir('.m.partial')


def test_every_shipped_package_loads_complete_without_the_data():
    """Each shipped config (and its mean's) loads to a complete config: every field recorded or
    migrated (runs.MIGRATIONS); this runs with no data, unlike the PSNR check below."""
    for name in pretrained.available():
        folder = pretrained.package_dir(name)
        for part in (folder, folder / runs.MEAN_DIR):
            if runs.Run.open(part).is_package:
                config = runs.Run.open(part).config()
                assert config.model.nf > 0, part


@pytest.mark.parametrize('name', pretrained.available())
def test_shipped_model_reproduces_its_recorded_psnr(name, celeba_id128, tmp_path):
    """On a fresh checkout the package loads and super-resolves the first test faces to the
    PSNR its export measured (model card), within float noise across machines."""
    check = runs.Run.open(pretrained.package_dir(name)).export_record()['check']
    config = ml_collections.ConfigDict(pretrained.load_config(name).to_dict())
    config.data.path = str(celeba_id128)
    _, psnr = export.sr_psnr(config, pretrained.package_dir(name), tmp_path, check['images'])
    assert psnr == pytest.approx(check['psnr_package'], abs=0.05)


def test_evals_of_a_package_go_to_results_not_into_the_package(tmp_path):
    from configs import default
    from evaluation.run import eval_root

    config = default.get_config()
    assert eval_root(config, tmp_path) == tmp_path / 'eval'  # A run.
    (tmp_path / runs.EXPORT_FILE).write_text('{}')
    assert eval_root(config, tmp_path) == pretrained.Path('results') / 'eval'
    config.eval.output = str(tmp_path / 'elsewhere')
    assert eval_root(config, tmp_path) == tmp_path / 'elsewhere'


def test_package_configs_merge_and_refuse_unknown_fields():
    from configs import default

    config = default.get_config()
    runs.merge(config, {'sampling': {'temperature': 0.7}, 'model': {'ch_mult': [1, 2]}}, 'x')
    assert config.sampling.temperature == 0.7 and config.model.ch_mult == (1, 2)
    with pytest.raises(ValueError, match=r"x:sampling: unknown config field 'tempreature'"):
        runs.merge(config, {'sampling': {'tempreature': 0.7}}, 'x')


def test_a_package_missing_a_field_is_refused_unless_a_migration_fills_it(tmp_path):
    """Issue 19 #4: a field the record lacks never silently takes today's default."""
    from configs import default

    record = {k: v for k, v in default.get_config().to_dict().items() if k not in runs.RUN_OPTIONS}
    del record['compute']['conv_grads']  # Migrated: the value older code ran with.
    record['sampling']['temperature'] = 0.5
    (tmp_path / runs.EXPORT_FILE).write_text('{}')
    (tmp_path / runs.CONFIG_FILE).write_text(json.dumps(record, default=list))
    config = runs.Run.open(tmp_path).config()
    assert config.compute.conv_grads == runs.MIGRATIONS['compute.conv_grads'].value == 'lax'
    assert config.sampling.temperature == 0.5 and config.sr.detect_scale > 0  # (run option)
    del record['sampling']['method']
    (tmp_path / runs.CONFIG_FILE).write_text(json.dumps(record, default=list))
    with pytest.raises(ValueError, match=r'config.json has no value for config.sampling.method'):
        runs.Run.open(tmp_path).config()


@pytest.mark.parametrize('name', sorted(pretrained.LADDERS))
def test_ladders_are_of_shipped_models(name):
    """``--sr.model auto`` (the default) and the other ladders: the primary's config and
    folder, every model shipped, with LR sides all different (ladder.resolve's checks)."""
    import ladder

    assert pretrained.DEFAULT_MODEL == pretrained.AUTO in pretrained.LADDERS
    models_of = pretrained.LADDERS[name]
    assert set(models_of) <= set(pretrained.available())
    config = pretrained.load_config(name)
    assert config.sr.model == models_of[0] and tuple(config.sr.ladder) == models_of
    primary = pretrained.package_dir(name)
    assert primary == pretrained.package_dir(models_of[0])
    models = ladder.resolve(config, primary)
    assert [m.name for m in models] == list(models_of)
    sizes = [m.rung.lr_size for m in models]
    assert len(set(sizes)) == len(sizes) == len(models_of)
    flags = pretrained.main_flags(['main.py', '--mode=sr', f'--sr.model={name}'])
    assert flags[1] == f'--config={pretrained.CONFIG_FILE}:{name}'
