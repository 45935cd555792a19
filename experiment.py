"""What every mode builds from a config: the SDE, the network, the device mesh, parameters."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

import models
import sampling
from models.wrappers import init_params
from sde_lib import SDE, make_sde
from utils import parallel

MODEL_NON_ARGS = ('name',)


def build_model(config: Any) -> nn.Module:
    """The network named by ``config.model.name`` with every other model field as keyword."""
    kwargs = {k: v for k, v in config.model.items() if k not in MODEL_NON_ARGS}
    kwargs['dtype'] = jnp.dtype(config.compute.dtype)
    return models.build_model(config.model.name, **kwargs)


@dataclasses.dataclass(frozen=True)
class Experiment:
    config: Any
    sde: SDE
    model: nn.Module
    mesh: jax.sharding.Mesh

    @property
    def hr_shape(self) -> tuple[int, int, int]:
        data = self.config.data
        return (data.image_size, data.image_size, data.num_channels)

    def make_sampler(self, sampling_config: Any = None) -> Callable:
        """``sampling.make_sampler`` for this model over the mesh; ``config.sampling`` unless
        another sampling config is given (sweeps)."""
        config = self.config
        return sampling.make_sampler(
            sampling_config or config.sampling,
            self.sde,
            self.model,
            config.score.parametrization,
            self.hr_shape,
            mesh=self.mesh,
            sigma_data=config.score.sigma_data,
        )

    def init_params(self, key: jax.Array) -> Any:
        """Initial parameters, computed once and replicated over the mesh."""
        init = jax.jit(
            lambda k: init_params(self.model, k, self.hr_shape),
            out_shardings=parallel.replicated_sharding(self.mesh),
        )
        return init(key)


def build(config: Any, devices: Any = None) -> Experiment:
    """The experiment of ``config`` over ``devices`` (default: all devices of all hosts)."""
    mesh = parallel.make_mesh(devices)
    return Experiment(config, make_sde(config.sde), build_model(config), mesh)
