"""The model registry and a constructor that checks keyword arguments against model fields."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn

from utils.registry import Registry

MODELS = Registry('model')


class ScoreNetwork(nn.Module):
    """What ``models.wrappers`` calls: ``__call__(x, time_label, train=False, lr=None)``, where
    ``x`` is the scaled state concatenated with the upsampled LR image and ``lr`` the LR image
    (read only by networks with an LR encoder). The output holds the parametrization's heads,
    then one image per name in ``aux_heads`` (outputs that are not heads of the score, such as
    the LR encoder's regression estimate)."""

    @property
    def aux_heads(self) -> tuple[str, ...]:
        return ()

    @property
    def regress_scopes(self) -> tuple[str, ...]:
        """The top-level parameter collections :meth:`regress` reads (all it needs: a mean
        model's package keeps only these)."""
        return ()

    def regress(self, params: Any, lr: Any, hr_size: tuple[int, int]) -> Any:
        """The ``'regression'`` aux head alone (networks with an LR encoder override this)."""
        raise ValueError('the network has no LR regression head: set config.model.lr_encoder_nf')


# Fields every Flax module has that are not model options.
_MODULE_INTERNALS = frozenset({'parent', 'name'})


def model_options(name: str) -> list[str]:
    """Sorted names of the keyword arguments that model ``name`` accepts."""
    cls = MODELS.get(name)
    while isinstance(cls, functools.partial):
        cls = cls.func
    fields = dataclasses.fields(cls)
    return sorted(f.name for f in fields if f.init and f.name not in _MODULE_INTERNALS)


def _to_tuples(value: Any) -> Any:
    """Lists (e.g. from a ConfigDict) become tuples, so module fields stay hashable."""
    if isinstance(value, list | tuple):
        return tuple(_to_tuples(v) for v in value)
    return value


def build_model(name: str, **kwargs: Any) -> nn.Module:
    """Instantiates registered model ``name``; an unknown keyword is a ``ValueError`` naming it."""
    options = model_options(name)
    for key in kwargs:
        if key not in options:
            raise ValueError(
                f'config.model.{key} is not an option of model {name}; options: {options}'
            )
    return MODELS.get(name)(**{k: _to_tuples(v) for k, v in kwargs.items()})


def get_model(name: str) -> Callable[..., nn.Module]:
    """A constructor for model ``name`` (``KeyError`` if unknown) that checks its kwargs.

    ``get_model(name)(**kwargs)`` is ``build_model(name, **kwargs)``; ``MODELS.get(name)``
    gives the raw registered class.
    """
    MODELS.get(name)
    return functools.partial(build_model, name)
