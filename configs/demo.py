"""The demo: trains a small VE model on real faces on a CPU in minutes, then super-resolves.

64x64 faces from 8x downscaled (8x8) LR, NCSN++ with nf 32; snapshots use the few-step
DPM-Solver++(2M) sampler so that a grid takes seconds. Faces are read from
``../shared/data/celeba_id128`` (or ``$FACESR_DATA/celeba_id128``); any folder of face images
works: ``--config.data.path=/my/faces``.
"""

from configs import default, presets


def get_config(arg: str = ''):
    config = default.get_config()
    presets.apply_preset(config, 'ncsnpp_small')
    config.sde.name = 'vesde'
    config.sde.sigma_min, config.sde.sigma_max, config.sde.num_scales = 0.01, 90.0, 1000
    # EDM preconditioning: with NCSN++'s scale_by_sigma the x0 estimate at sigma ~ 90 is off
    # by sigma times the network's error, and samplers of a model trained for minutes diverge.
    config.score.parametrization = 'edm'
    config.data.image_size, config.data.downscale = 64, 8
    config.training.batch_size = 8
    config.training.n_iters = 1500  # About 25 minutes on 2 CPU cores (0.9 s a step).
    config.training.log_freq = 25
    config.training.checkpoint_freq = 250
    config.training.snapshot_freq = 500
    config.optim.warmup = 100
    config.optim.lr = 5e-4
    config.optim.ema_rate = 0.99
    config.sampling.update(method='dpm2m', num_steps=30, schedule='logsnr', eps=1e-5)
    if arg == 'smoke':
        presets.apply_smoke(config)
        config.sampling.num_steps = 10
    return config
