"""Score models. Importing this package registers every model in :data:`MODELS`.

Typical use: ``models.get_model(config.model.name)(**model_kwargs)`` where the kwargs are the
fields of ``config.model`` other than ``name``; an unknown field raises a ``ValueError``.
"""

from models import ncsnpp  # noqa: F401  (registers 'ncsnpp' and 'ddpmpp')
from models.utils import MODELS, build_model, get_model, model_options

__all__ = ['MODELS', 'build_model', 'get_model', 'model_options']
