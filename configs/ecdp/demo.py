"""ECDP demo: the VE demo's network and budget (64x64 faces from 8x8 LR, NCSN++ nf 32, 1500
steps, about 25 minutes on 2 CPU cores), with ECDP's SDE, parametrization and sampler.

Run ``--mode stats`` first (it measures sigma^2 on the training faces and stores it in the
workdir), then ``--mode train``, ``--mode sr`` / ``--mode eval``::

    python main.py --config configs/ecdp/demo.py --workdir W --mode stats
    python main.py --config configs/ecdp/demo.py --workdir W

``get_config('finetune')`` is ECDP's second stage: the image-quality loss through the ODE
alone (the paper switches the diffusion loss off), from the EMA weights of a trained run, at a
low learning rate with a fast EMA (the paper: 1e-5, decay 0.9)::

    python main.py --config configs/ecdp/demo.py:finetune --workdir W2 --mode stats
    python main.py --config configs/ecdp/demo.py:finetune --workdir W2 \
        --config.training.init_from=W

``get_config('regress')`` and ``get_config('encoder')`` add the LR encoder (``models/rrdb.py``,
two RRDBs at LR resolution): ``regress`` is its L1 pre-training alone (a regression SR network;
the diffusion loss is off, so only the encoder and its head train, and the SDE is unused);
``encoder`` trains the whole network from it, jointly with the L1 term, around the frozen
regression of the first stage as mu(y) instead of bicubic::

    python main.py --config configs/ecdp/demo.py:regress --workdir R
    E="--config configs/ecdp/demo.py:encoder --workdir W --config.sde.mean_model=R"
    python main.py $E --mode stats
    python main.py $E --config.training.init_from=R

On the shared 2-core VM the L1 stage (3000 steps, batch 16) took 22 min and the second stage
(1500 steps) 28 min; the regression alone reaches PSNR 21.05 / SSIM 0.612 on the 1119 test faces
(bicubic 18.51 / 0.424), and it halves sigma^2 (0.0084 against 0.0150 around bicubic).
``sampling.temperature`` below 1 moves the samples towards that mean (see the README).

``regress_identity`` fine-tunes a trained regression with the identity loss (issue 20:
``training.identity_weight``, the frozen JAX SFace), e.g. the shipped 4x model's mean::

    python main.py --config configs/ecdp/demo.py:regress_identity --workdir RI \
        --config.data.downscale=4 --config.training.init_from=pretrained/ecdp_x4/mean

``encoder_finetune`` is the quality stage of the ``encoder`` model (around the same learned
mean: pass ``--config.sde.mean_model=R`` and copy W's ``residual_stats.json``, or rerun
``--mode stats``).

``degraded`` trains on real-world LR instead of clean LR: each face its own random blur, noise,
JPEG quality and downscaling kernel (``configs/degradation_presets.py``: the ranges and why);
joined to any stage (``encoder_degraded``...). Run ``--mode stats`` with it: sigma^2 is then the
degraded data's.

``get_config('smoke')`` shrinks everything for a seconds-long run (tests); ``smoke_regress``
and ``smoke_encoder`` are the two stages at that size.
"""

from configs import default, degradation_presets, presets

STAGES = ('smoke', 'regress', 'encoder', 'finetune', 'identity', 'degraded')
# The identity loss's weight in the 'identity' stage: 1 - cos is about 0.5 for mu(y) against
# its HR face, the L1 of mu(y) about 0.07 (model range), so 0.1 makes them comparable.
IDENTITY_WEIGHT = 0.1


def get_config(arg: str = ''):
    parts = set(arg.split('_')) - {''}
    if parts - set(STAGES):
        raise ValueError(
            f'configs/ecdp/demo.py: unknown stage {arg!r}; join any of {STAGES} with "_"'
        )
    config = default.get_config()
    presets.apply_preset(config, 'ncsnpp_small')
    config.data.image_size, config.data.downscale = 64, 8
    presets.apply_ecdp(config)
    config.training.batch_size = 8
    config.training.n_iters = 1500  # Same budget as configs/demo.py.
    config.training.log_freq = 25
    config.training.checkpoint_freq = 250
    config.training.snapshot_freq = 500
    config.optim.warmup = 100
    config.optim.lr = 5e-4
    config.optim.ema_rate = 0.99
    if 'finetune' in parts:
        # Heun with 8 fixed steps (16 NFE) generates within 38.6 dB PSNR of the adaptive ODE
        # at 1e-4 on the trained demo (dopri5 at 1e-3: 47.7 dB, 67 NFE), at a quarter of the cost.
        # Convolution gradients fast inside the solver loop (models/conv.py): faster than the
        # unrolled steps (1.4x per step, 7.3x to compile; bench/results/quality_step.md).
        config.compute.conv_grads = 'loops'
        config.training.update(
            quality_solver='heun',
            quality_fixed_steps=8,
            diffusion_weight=0.0,
            quality_weight=1.0,
            n_iters=100,
            batch_size=4,
            log_freq=5,
            checkpoint_freq=25,
            snapshot_freq=50,
        )
        config.optim.update(lr=1e-5, warmup=1, ema_rate=0.9)
    if parts & {'regress', 'encoder'}:
        config.model.update(lr_encoder_nf=32, lr_encoder_blocks=2, lr_encoder_growth=16)
        config.training.regression_weight = 1.0
    if 'regress' in parts:
        config.sde.name = 'vpsde'  # Unused: no diffusion term; needs no statistics.
        config.training.update(diffusion_weight=0.0, n_iters=3000, batch_size=16, snapshot_freq=0)
        config.optim.lr = 5e-4
    if 'identity' in parts:
        # Identity loss (issue 20) on every image a term makes: with 'regress' a "regression +
        # identity" mu(y), fine-tuned from a trained regression (init_from: a run, or a
        # shipped model's mean/ package), briefly and at a lower learning rate.
        config.training.identity_weight = IDENTITY_WEIGHT
        if 'regress' in parts:
            config.training.update(n_iters=600, checkpoint_freq=100)
            config.optim.update(lr=1e-4, warmup=1)
    if 'degraded' in parts:
        degradation_presets.apply_random_degradation(config.data)
    if 'smoke' in parts:
        presets.apply_ecdp_smoke(config)
        if config.model.lr_encoder_nf:
            config.model.update(lr_encoder_nf=8, lr_encoder_blocks=1, lr_encoder_growth=8)
    return config
