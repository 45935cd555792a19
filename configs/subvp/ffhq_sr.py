"""SDE-SR, sub-VP SDE: the VP experiment (configs/vp/ffhq_sr.py) with the sub-VP diffusion."""

from configs import presets
from configs.vp import ffhq_sr as vp_ffhq_sr


def get_config(arg: str = ''):
    config = vp_ffhq_sr.get_config(arg)
    config.sde.name = 'subvpsde'
    config.sampling.update(**presets.SDESR_SAMPLING['subvp'])
    return config
