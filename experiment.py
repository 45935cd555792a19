"""What every mode builds from a config: the SDE, the network, the device mesh, parameters."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

import distillation
import losses
import models
import runs
import sampling
from models.wrappers import get_parametrization, init_params
from sde_lib import SDE, make_sde
from utils import parallel

MODEL_NON_ARGS = ('name',)


def check_output_channels(config: Any) -> None:
    """The network must output one image per head of the parametrization."""
    heads = get_parametrization(config.score.parametrization).heads
    want = len(heads) * config.data.num_channels
    if config.model.out_channels != want:
        raise ValueError(
            f'config.model.out_channels={config.model.out_channels}, but '
            f'score.parametrization={config.score.parametrization!r} has {len(heads)} head(s) '
            f'{heads} of data.num_channels={config.data.num_channels}: set it to {want}'
        )


def build_model(config: Any) -> nn.Module:
    """The network named by ``config.model.name`` with every other model field as keyword,
    and how it computes (``config.compute``: dtype, convolution gradients)."""
    check_output_channels(config)
    kwargs = {k: v for k, v in config.model.items() if k not in MODEL_NON_ARGS}
    kwargs['dtype'] = jnp.dtype(config.compute.dtype)
    kwargs['conv_grads'] = config.compute.conv_grads
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

    @property
    def lr_shape(self) -> tuple[int, int, int]:
        data = self.config.data
        size = data.image_size // data.downscale
        return (size, size, data.num_channels)

    def new_params(self, key: jax.Array) -> Any:
        """Initial parameters (not jitted, not placed: see :meth:`init_params`)."""
        return init_params(self.model, key, self.hr_shape, lr_shape=self.lr_shape)

    def make_sampler(self, sampling_config: Any = None, guidance: Any = None) -> Callable:
        """``sampling.make_sampler`` for this model over the mesh; ``config.sampling`` unless
        another sampling config is given (sweeps), guided by ``guidance`` (a
        ``guidance.Guidance``) if given. A student's sampler is checked against what the
        student was trained at (``distillation.check_sampling``)."""
        config = self.config
        sampling_config = sampling_config or config.sampling
        distillation.check_sampling(config, sampling_config)
        return sampling.make_sampler(
            sampling_config,
            self.sde,
            self.model,
            config.score,
            config.data,
            self.hr_shape,
            mesh=self.mesh,
            guidance=guidance,
        )

    def abstract_state(self) -> losses.TrainState:
        """Shapes, dtypes and (replicated) shardings of the training state: nothing computed."""
        optimizer = losses.make_optimizer(self.config.optim)
        shapes = jax.eval_shape(
            lambda k: losses.init_train_state(self.new_params(k), optimizer),
            jax.random.PRNGKey(0),
        )
        replicated = parallel.replicated_sharding(self.mesh)
        return jax.tree.map(
            lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=replicated), shapes
        )

    def load_ema_params(
        self,
        folder: str | Path,
        step: int | None = None,
        must_match: tuple[str, ...] = runs.MUST_MATCH,
        scopes: tuple[str, ...] = (),
    ) -> tuple[Any, int]:
        """The EMA parameters of checkpoint ``step`` (default: the latest) of the run or
        package in ``folder`` (:meth:`runs.Run.ema_params`), and that step.

        This config must equal the run's record on ``must_match`` (a warm start of a new stage
        checks only ``('model',)``: its SDE, mean or data may change).
        """
        run = runs.Run.open(folder)
        run.check_matches(self.config, must_match)
        return run.ema_params(self.abstract_state(), step, scopes)

    def init_params(self, key: jax.Array) -> Any:
        """Initial parameters, computed once and replicated over the mesh."""
        init = jax.jit(
            self.new_params,
            out_shardings=parallel.replicated_sharding(self.mesh),
        )
        return init(key)


def build(config: Any, devices: Any = None, workdir: str | Path | None = None) -> Experiment:
    """The experiment of ``config`` over ``devices`` (default: all devices of all hosts).

    ``workdir`` holds the run's training-set statistics, read only by SDEs that need them
    (ECDP's sigma: ``runs.Run.read_stats``).
    """
    mesh = parallel.make_mesh(devices)

    def stats() -> dict[str, Any]:
        if workdir is None and not config.sde.stats_file:
            raise ValueError(
                f'config.sde.name={config.sde.name!r} needs the residual statistics of the run: '
                'build the experiment with its workdir, or set config.sde.stats_file'
            )
        return runs.Run.open(workdir or '').read_stats(config)

    return Experiment(config, make_sde(config.sde, stats), build_model(config), mesh)
