"""The config of a shipped model: ``--config configs/pretrained.py:NAME`` (``pretrained/NAME``).

It is the config the model was trained and exported with (its package's ``config.json``), so
``--config.X`` overrides work as for any config; ``main.py --mode sr`` without ``--config``
uses it (see ``pretrained.py``).
"""

import pretrained


def get_config(name: str = ''):
    return pretrained.load_config(name or pretrained.DEFAULT_MODEL)
