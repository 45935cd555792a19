"""Shipped models (``pretrained/``): choosing one on the command line, and each package
reproducing the PSNR its export recorded."""

from __future__ import annotations

import ml_collections
import pytest

import export
import pretrained
from utils import package


def test_sr_without_config_uses_the_default_shipped_model(monkeypatch, tmp_path):
    (tmp_path / 'm').mkdir()
    (tmp_path / 'm' / package.EXPORT_FILE).write_text('{}')
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
    assert package.resolve('mean', tmp_path) == 'mean'  # A run: as recorded.
    (tmp_path / package.EXPORT_FILE).write_text('{}')
    assert package.resolve('mean', tmp_path) == str((tmp_path / 'mean').absolute())
    assert package.resolve('/abs/r', tmp_path) == '/abs/r'
    assert package.resolve('', tmp_path) == ''


@pytest.mark.parametrize('name', pretrained.available())
def test_shipped_model_reproduces_its_recorded_psnr(name, celeba_id128, tmp_path):
    """On a fresh checkout the package loads and super-resolves the first test faces to the
    PSNR its export measured (model card), within float noise across machines."""
    check = package.read_export(pretrained.package_dir(name))['check']
    config = ml_collections.ConfigDict(pretrained.load_config(name).to_dict())
    config.data.path = str(celeba_id128)
    _, psnr = export.sr_psnr(config, pretrained.package_dir(name), tmp_path, check['images'])
    assert psnr == pytest.approx(check['psnr_package'], abs=0.05)


def test_evals_of_a_package_go_to_results_not_into_the_package(tmp_path):
    from configs import default
    from evaluation.run import eval_root

    config = default.get_config()
    assert eval_root(config, tmp_path) == tmp_path / 'eval'  # A run.
    (tmp_path / package.EXPORT_FILE).write_text('{}')
    assert eval_root(config, tmp_path) == pretrained.Path('results') / 'eval'
    config.eval.output = str(tmp_path / 'elsewhere')
    assert eval_root(config, tmp_path) == tmp_path / 'elsewhere'


def test_package_configs_load_over_defaults_and_refuse_unknown_fields():
    from configs import default

    config = default.get_config()
    pretrained.merge(config, {'sampling': {'temperature': 0.7}, 'model': {'ch_mult': [1, 2]}}, 'x')
    assert config.sampling.temperature == 0.7 and config.model.ch_mult == (1, 2)
    with pytest.raises(ValueError, match=r"x:sampling: unknown config field 'tempreature'"):
        pretrained.merge(config, {'sampling': {'tempreature': 0.7}}, 'x')
