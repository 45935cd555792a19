"""SDE-SR, VP SDE: NCSN++ at 128x128, beta 0.1 -> 20, N = 2000, reverse-diffusion predictor.

Data are centered to [-1, 1] and the network predicts the noise (``eps``), as in score_sde's VP
models; the time embedding is positional (the VP time label is 999 t).
"""

from configs import default, presets


def get_config(arg: str = ''):
    config = default.get_config()
    presets.apply_preset(config, 'ncsnpp_sr128')
    config.model.embedding_type = 'positional'
    config.sde.name = 'vpsde'
    config.sde.beta_min, config.sde.beta_max, config.sde.num_scales = 0.1, 20.0, 2000
    config.score.parametrization = 'eps'
    config.data.image_size, config.data.downscale, config.data.centered = 128, 8, True
    config.training.batch_size = 16
    config.sampling.update(method='pc', **presets.SDESR_SAMPLING['vp'])
    if arg == 'smoke':
        presets.apply_smoke(config)
        config.model.embedding_type = 'positional'
    return config
