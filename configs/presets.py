"""Named network presets: experiment configs pick one instead of repeating field lists."""

from __future__ import annotations

from typing import Any

from configs import default

PRESETS: dict[str, dict[str, Any]] = {
    # SDE-SR's network: NCSN++ at 128x128, about 65 M parameters.
    'ncsnpp_sr128': dict(
        name='ncsnpp',
        nf=128,
        ch_mult=(1, 1, 2, 2, 2, 2, 2),
        num_res_blocks=2,
        attn_resolutions=(16,),
        resblock_type='biggan',
        fir=True,
        skip_rescale=True,
        progressive='none',
        progressive_input='input_skip',
        progressive_combine='sum',
        embedding_type='fourier',
        dropout=0.0,
    ),
    # A small NCSN++ that trains in minutes on a CPU at 32-64 px.
    'ncsnpp_small': dict(
        name='ncsnpp',
        nf=32,
        ch_mult=(1, 2, 2, 2),
        num_res_blocks=1,
        attn_resolutions=(8,),
        resblock_type='biggan',
        fir=True,
        skip_rescale=True,
        progressive='none',
        progressive_input='input_skip',
        progressive_combine='sum',
        embedding_type='fourier',
        dropout=0.0,
    ),
    # The smallest network worth testing: for unit tests and ``:smoke`` runs.
    'ncsnpp_tiny': dict(
        name='ncsnpp',
        nf=16,
        ch_mult=(1, 2),
        num_res_blocks=1,
        attn_resolutions=(),
        resblock_type='biggan',
        fir=True,
        skip_rescale=True,
        progressive='none',
        progressive_input='none',
        progressive_combine='sum',
        embedding_type='fourier',
        dropout=0.0,
    ),
}


def apply_preset(config: Any, name: str) -> None:
    """Sets ``config.model`` fields from preset ``name``."""
    if name not in PRESETS:
        raise KeyError(f'unknown model preset {name!r}; known: {sorted(PRESETS)}')
    for key, value in PRESETS[name].items():
        if key not in config.model:
            raise KeyError(f'preset {name!r} sets config.model.{key}, which does not exist')
        config.model[key] = value


def apply_smoke(config: Any) -> None:
    """Shrinks everything for a seconds-long run (``get_config('smoke')``): tests, CI, demos."""
    apply_preset(config, 'ncsnpp_tiny')
    config.data.image_size = 32
    config.data.downscale = 4
    config.training.batch_size = 8
    config.training.n_iters = 20
    config.training.log_freq = 5
    config.training.checkpoint_freq = 10
    config.training.snapshot_freq = 0
    config.training.snapshot_batch = 8
    config.sde.num_scales = 50  # Discrete VP tables need beta_max / N < 1.
    config.sampling.num_steps = None  # = sde.num_scales, as discrete predictors require.
    config.optim.warmup = 10
    config.eval.face = ('sface',)  # dlib costs about 0.1 s per face on CPU: one recogniser.


# SDE-SR's samplers (N = 2000): SDE-VE, SDE-VP, SDE-subVP, and SDE-VEcs (VE with M = 2
# Langevin corrections; the signal-to-noise ratio r is config.sampling.snr).
SDESR_SAMPLING: dict[str, dict[str, Any]] = {
    've': dict(predictor='euler_maruyama', corrector='none', eps=1e-5),
    'vp': dict(predictor='reverse_diffusion', corrector='none', eps=1e-3),
    'subvp': dict(predictor='reverse_diffusion', corrector='none', eps=1e-3),
    'vecs': dict(predictor='euler_maruyama', corrector='langevin', n_steps_each=2, eps=1e-5),
}


def sdesr_sampling_config(variant: str) -> Any:
    """The sampling config of an SDE-SR variant: 've', 'vp', 'subvp' or 'vecs'."""
    if variant not in SDESR_SAMPLING:
        raise ValueError(f'unknown SDE-SR variant {variant!r}; known: {sorted(SDESR_SAMPLING)}')
    cfg = default.sampling_config()
    cfg.update(method='pc', num_steps=2000, **SDESR_SAMPLING[variant])
    return cfg


def apply_ecdp(config: Any) -> None:
    """ECDP (Yuan & Yuan, AAAI 2024) on top of a network preset: the mean-reverting SDE around
    the upsampled LR image (beta 0.1 -> 20; sigma^2 measured by ``--mode stats``), the hybrid
    eps/x0 parametrization with lambda = abar(t) (c = 1, as the paper's code), both heads
    regressed equally (``training.loss='heads'``), and probability-flow ODE sampling with an
    adaptive solver at the code's tolerance 1e-3 (the paper says 1e-4), ending at t = 1e-3
    without a final denoising step, as the paper's sampler does.
    """
    config.sde.name = 'ecdp'
    config.sde.beta_min, config.sde.beta_max, config.sde.num_scales = 0.1, 20.0, 1000
    config.score.parametrization, config.score.hybrid_c = 'hybrid', 1.0
    config.model.out_channels = 2 * config.data.num_channels  # eps and x0 heads.
    config.training.loss = 'heads'
    config.sampling.update(
        method='ode', ode_solver='dopri5', rtol=1e-3, atol=1e-3, eps=1e-3, noise_removal=False
    )


def apply_ecdp_smoke(config: Any) -> None:
    """:func:`apply_smoke` for an ECDP config: its continuous loss and ODE need no discrete
    tables, and the heads stay two per channel of the smaller data."""
    apply_smoke(config)
    config.sde.num_scales = 1000
    config.model.out_channels = 2 * config.data.num_channels
