"""Shared test fixtures: real-data location and a persistent XLA compilation cache."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# Compilations dominate test time on CPU; a cache shared by the test process and the
# subprocesses it starts (multi-host, kill/resume) avoids compiling the same step twice.
_CACHE = os.environ.setdefault(
    'FACESR_TEST_JAX_CACHE', os.path.join(tempfile.gettempdir(), 'facesr_test_jax_cache')
)

# Every test process sees 8 simulated CPU devices, so data-parallel code paths are exercised;
# single-device references use a 1-device mesh. Must be set before JAX is imported.
if '--xla_force_host_platform_device_count' not in os.environ.get('XLA_FLAGS', ''):
    os.environ['XLA_FLAGS'] = (
        os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=8'
    ).strip()

import jax  # noqa: E402

jax.config.update('jax_compilation_cache_dir', _CACHE)
jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)
jax.config.update('jax_persistent_cache_min_entry_size_bytes', -1)

from utils.paths import DATA_ENV_VAR, shared_data_dir  # noqa: E402


@pytest.fixture(scope='session')
def shared_data() -> Path:
    """``../shared/data`` (or ``$FACESR_DATA``); skips the test with a reason if absent."""
    path = shared_data_dir()
    if not path.is_dir():
        pytest.skip(f'shared face data not found at {path} (set {DATA_ENV_VAR})')
    return path


@pytest.fixture(scope='session')
def celebahq32(shared_data: Path) -> Path:
    path = shared_data / 'celebahq32'
    if not path.is_dir():
        pytest.skip(f'{path} is missing')
    return path


@pytest.fixture(scope='session')
def celeba_id128(shared_data: Path) -> Path:
    path = shared_data / 'celeba_id128'
    if not path.is_dir():
        pytest.skip(f'{path} is missing')
    return path


@pytest.fixture(scope='session')
def lfw_pairs(shared_data: Path) -> Path:
    """LFW deep-funneled images and ``pairs.csv`` (View 2); skips with a reason if absent."""
    path = shared_data / 'lfw_pairs'
    if not (path / 'pairs.csv').is_file():
        pytest.skip(f'{path}/pairs.csv is missing (LFW pairs data)')
    return path


def require_face_model(name: str) -> None:
    """Skips, with the reason, when the ONNX face model ``name`` ('yunet', 'sface') or
    onnxruntime is not installed."""
    pytest.importorskip('onnxruntime')
    pytest.importorskip('onnx')
    from faces.onnx_models import model_path

    try:
        model_path(name)
    except ModuleNotFoundError as err:
        pytest.skip(str(err))
