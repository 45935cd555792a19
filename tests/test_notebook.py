"""``notebooks/demo.ipynb`` runs top to bottom (smallest settings), as Jupyter runs it."""

from __future__ import annotations

import pytest

from utils.paths import REPO_ROOT

NOTEBOOK = REPO_ROOT / 'notebooks' / 'demo.ipynb'
#: Generous: the smoke run takes about a minute on 2 cores (compiling most of it).
TIMEOUT_S = 900


def test_notebook_runs_top_to_bottom(monkeypatch, tmp_path):
    """Every cell runs without error, shows its pictures, and the metric table has a row per
    face and method; executed outputs are never written back (the committed notebook has
    none)."""
    nbformat = pytest.importorskip('nbformat')
    nbclient = pytest.importorskip('nbclient')
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not cell.get('outputs') for cell in notebook.cells if cell.cell_type == 'code')
    monkeypatch.setenv('FACESR_NOTEBOOK_SMOKE', '1')
    monkeypatch.setenv('FACESR_NOTEBOOK_OUT', str(tmp_path))
    client = nbclient.NotebookClient(
        notebook, timeout=TIMEOUT_S, kernel_name='python3',
        resources={'metadata': {'path': str(REPO_ROOT / 'notebooks')}})  # fmt: skip
    client.execute()
    outputs = [o for cell in notebook.cells for o in cell.get('outputs', [])]
    images = [o for o in outputs if 'image/png' in o.get('data', {})]
    assert len(images) >= 2 + 2 + 1  # photos, uncertainty sheets, the tiny model's snapshot
    tables = [o['data']['text/markdown'] for o in outputs if 'text/markdown' in o.get('data', {})]
    assert len(tables) == 1 and tables[0].count('\n') == 2 + 2 * 3 - 1
    assert (tmp_path / 'photos' / 'manifest.json').is_file()
