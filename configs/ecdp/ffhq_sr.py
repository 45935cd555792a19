"""ECDP at 128x128 from 8x downscaled LR (16x: --config.data.downscale=16), on SDE-SR's NCSN++.

The paper trains a U-Net with an RRDB LR encoder on 160x160 CelebA (20x20 LR) for 100k steps at
batch 12, Adam 1e-4; here the network is SDE-SR's NCSN++ so that SDE-SR and ECDP compare on the
same model. Run ``--mode stats`` first (sigma^2 of the residual, stored in the workdir).
"""

from configs import default, presets


def get_config(arg: str = ''):
    config = default.get_config()
    presets.apply_preset(config, 'ncsnpp_sr128')
    config.data.image_size, config.data.downscale = 128, 8
    presets.apply_ecdp(config)
    config.training.batch_size = 12
    config.optim.lr, config.optim.warmup = 1e-4, 500
    if arg == 'smoke':
        presets.apply_ecdp_smoke(config)
    return config
