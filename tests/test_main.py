"""``main.py``: a user's mistake is one line, ``error: ...``, and exit status 2 (issue 22);
``--verbose`` shows the traceback."""

from __future__ import annotations

import subprocess
import sys

from utils.paths import REPO_ROOT


def _main(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, str(REPO_ROOT / 'main.py'), *args]
    return subprocess.run(command, capture_output=True, timeout=300, cwd=REPO_ROOT)


def _smoke(workdir, *args: str) -> subprocess.CompletedProcess:
    config = str(REPO_ROOT / 'configs' / 'demo.py') + ':smoke'
    return _main('--config', config, '--workdir', str(workdir), *args)


def test_a_bad_config_value_is_one_line_and_exit_status_2(tmp_path):
    result = _smoke(tmp_path, '--mode', 'distill')  # The demo is no distillation config.
    err = result.stderr.decode()
    assert result.returncode == 2, err[-2000:]
    assert 'Traceback' not in err, err[-2000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith('error: --mode distill needs config.training.distill_weight'), last
    verbose = _smoke(tmp_path, '--mode', 'distill', '--verbose')
    assert verbose.returncode not in (0, 2) and 'Traceback' in verbose.stderr.decode()


def test_an_unknown_mode_or_shipped_model_is_named_in_one_line(tmp_path):
    for result, named in (
        (_smoke(tmp_path, '--mode', 'nope'), "unknown mode 'nope'"),
        (_main('--mode', 'sr', '--sr.model', 'nope', '--sr.input', 'x'), "shipped model 'nope'"),
    ):
        err = result.stderr.decode()
        assert result.returncode == 2 and 'Traceback' not in err, err[-2000:]
        assert err.strip().splitlines()[-1].startswith('error: ') and named in err, err[-2000:]
