"""The benchmark suite's machinery (not its timings): FLOP counts, callback check, report."""

from __future__ import annotations

import dataclasses
import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bench import run


def test_lowered_flops_count_a_convolution() -> None:
    """XLA's count of an unpartitioned 3x3 VALID conv is 2 * B * H' * W' * Cin * Cout * 9."""
    x = jnp.ones((2, 8, 8, 4))
    w = jnp.ones((3, 3, 4, 5))
    dims = ('NHWC', 'HWIO', 'NHWC')
    fn = jax.jit(
        lambda x: jax.lax.conv_general_dilated(x, w, (1, 1), 'VALID', dimension_numbers=dims)
    )
    assert run._lowered_flops(fn, (x,)) == pytest.approx(2 * 2 * 6 * 6 * 4 * 5 * 9, rel=0.01)


def test_host_callbacks_are_found_in_compiled_programs() -> None:
    def with_callback(x):
        jax.debug.callback(lambda v: None, x)
        return x * 2

    x = jnp.ones(3)
    assert run._host_callbacks(jax.jit(with_callback).lower(x).compile()) > 0
    assert run._host_callbacks(jax.jit(lambda x: x * 2).lower(x).compile()) == 0


def test_smoke_case_measures_everything_and_reports_it() -> None:
    case = run.SUITES['smoke'][0]
    result = run.run_case(case, trained='')
    assert result['devices'] == min(case.batch, jax.device_count())
    forward, train = result['forward'], result['train']
    assert forward['gflops'] > 0 and train['gflops'] > 2 * forward['gflops']  # + backward
    assert len(forward['run_s_all']) == len(train['run_s_all']) == case.repeats
    (label,) = case.samplers
    row = result['samplers'][label]
    assert row['nfe'] == case.sampler_steps + 1  # DPM-Solver++(2M) steps + final denoising.
    assert row['host_callbacks'] == 0 and row['compiles_while_running'] == 0
    assert row['per_nfe_s'] * row['nfe'] == pytest.approx(row['run_s_median'], rel=1e-2)
    assert row['images_per_s'] == pytest.approx(case.batch / (row['per_nfe_s'] * 20), rel=1e-3)
    assert result['peak_host_mb'] > 0
    suite = {
        'machine': run.machine_info(),
        'ceilings': {'conv3x3_f32': {'gflop_per_s': 100.0}},
        'cases': {case.name: dict(result, case=dataclasses.asdict(case))},
    }
    table = run.markdown('smoke', json.loads(json.dumps(suite)))
    assert f'| {case.name} | {label} | {case.sampler_steps} | {row["nfe"]} |' in table
    assert f'{100 * forward["gflop_per_s"] / 100.0:.0f}%' in table


def test_failing_child_reports_its_error(tmp_path, monkeypatch) -> None:
    case = dataclasses.replace(run.SUITES['smoke'][0], config=str(tmp_path / 'missing.py'))
    args = ['--child', 'case', '--case', json.dumps(dataclasses.asdict(case))]
    result = run.run_child(args, 120)
    assert result['error'].startswith('exit 1') and 'missing.py' in result['error']
    # The child runs with this interpreter (the venv's), not whatever 'python' is on PATH.
    monkeypatch.setattr(sys, 'executable', str(tmp_path / 'no-such-python'))
    with pytest.raises(FileNotFoundError, match='no-such-python'):
        run.run_child(args, 120)


def test_suites_name_cases_uniquely() -> None:
    for suite, cases in run.SUITES.items():
        names = [c.name for c in cases]
        assert len(names) == len(set(names)), suite
        assert all(np.all([c.batch > 0, c.repeats > 0]) for c in cases)
