"""SDE-SR, VE SDE: NCSN++ at 128x128 from 8x downscaled LR (16x: --config.data.downscale=16).

Hyper-parameters of the paper: sigma 0.01 -> 348, N = 2000, Adam 2e-4 with 5000 warm-up steps,
Euler-Maruyama predictor. FFHQ cannot be downloaded here: point ``data.path`` at an FFHQ folder
or TFRecords (``data.source='tfrecord'``); the default reads ../shared/data/celeba_id128.
``get_config('smoke')`` shrinks everything for a seconds-long run.
"""

from configs import default, presets


def get_config(arg: str = ''):
    config = default.get_config()
    presets.apply_preset(config, 'ncsnpp_sr128')
    config.sde.name = 'vesde'
    config.sde.sigma_min, config.sde.sigma_max, config.sde.num_scales = 0.01, 348.0, 2000
    config.score.parametrization = 'scaled_score'
    config.data.image_size, config.data.downscale, config.data.centered = 128, 8, False
    config.training.batch_size = 16
    config.sampling.update(method='pc', **presets.SDESR_SAMPLING['ve'])
    if arg == 'smoke':
        presets.apply_smoke(config)
    return config
