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

``get_config('smoke')`` shrinks everything for a seconds-long run (tests).
"""

from configs import default, presets


def get_config(arg: str = ''):
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
    if arg == 'finetune':
        # Heun with 8 fixed steps (16 NFE) generates within 38.6 dB PSNR of the adaptive ODE
        # at 1e-4 on the trained demo (dopri5 at 1e-3: 47.7 dB, 67 NFE), at a quarter of the cost.
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
    if arg == 'smoke':
        presets.apply_ecdp_smoke(config)
    return config
