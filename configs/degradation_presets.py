"""Real-world LR degradations, chosen once: the per-image ranges a model trains on
(``data.random_degradation``, :func:`apply_random_degradation`) and the fixed degraded LR an
eval reports beside the clean one (``eval.degradation``, :data:`EVAL_DEGRADATIONS`).

Why: the shipped models are trained on clean antialiased-bilinear LR only, while a
surveillance frame is blurred, noisy, JPEG-compressed and shrunk by whatever kernel the camera
or the software used; with LR made by area averaging (OpenCV ``INTER_AREA``) the default model
falls below bicubic enlargement of the same LR. Blind face restoration trains on random draws
of such degradations per image. The ranges they use, and how they become ours (64x64 HR faces,
16x16 or 8x8 LR):

=================  ==============  ====================  ==========  ========================
                   blur sigma      noise sigma (/255)    JPEG        downscale
=================  ==============  ====================  ==========  ========================
GFPGAN             0.1-10 px       0-20                  60-100      0.8-8, one kernel
                   (512-px faces)
Real-ESRGAN (1st)  0.2-3 px        1-30                  30-95       area/bilinear/bicubic
CodeFormer         heavier         0-20                  30-90       larger factors
**here**           0-2 HR px       0-20                  40-95       the 7 kernels below
=================  ==============  ====================  ==========  ========================

* **Blur** (Gaussian, of the HR, in HR pixels, the same for x4 and x8: GFPGAN and Real-ESRGAN
  draw it independently of the downscale too): GFPGAN's top, 10 px on a 512-px face, is
  1.25 px on our 64-px faces; Real-ESRGAN's is 3 px on images it shrinks 4x. 2 HR px (half an LR
  pixel at x4) sits between, and adds to the kernel's own footprint (std 1.15 HR px for 4x
  area, 1.63 for antialiased bilinear). The low end is 0: sharp LR is drawn too.
* **Noise** (Gaussian, of the LR, in [0, 1] units): GFPGAN's and CodeFormer's 0-20 grey levels;
  intensities do not scale with the image size.
* **JPEG** (of the LR, Pillow, 4:2:0 chroma): from 40, not 30: a 16x16 LR face is four luma
  blocks and one chroma block, and lower qualities leave little of it; up to 95, nearly
  lossless for luma (100 would still subsample chroma, so it is no cleaner draw).
* **Kernels**: area (box averaging: a camera sensor's integration, and OpenCV's ``INTER_AREA``
  that breaks the shipped model) and bilinear, bicubic, Lanczos-3, each with and without
  antialiasing (software that shrinks frames by interpolation without a low-pass filter):
  uniform over the seven, the trained bilinear one among them.

The fixed eval setting ``'degraded'`` is about the middle of each training range (blur 1 HR px,
noise 10/255, JPEG 70), at the eval's kernel (``eval.down_kernel``, default the model's own): one
documented surveillance-like LR on which every model is reported beside clean LR.
"""

from __future__ import annotations

from typing import Any

GREY_LEVELS = 255  # Noise sigmas below are given in 8-bit grey levels.

#: Every downscaling kernel spec (module doc): drawn from in training, each reported by
#: ``bench/kernels.py``.
KERNELS = (
    'area',
    'bilinear',
    'bilinear:noaa',
    'bicubic',
    'bicubic:noaa',
    'lanczos3',
    'lanczos3:noaa',
)

#: Ranges of random training degradation (``config.data`` fields; see the module doc).
TRAINING: dict[str, Any] = dict(
    blur_sigma_range=(0.0, 2.0),
    noise_sigma_range=(0.0, 20 / GREY_LEVELS),
    jpeg_quality_range=(40, 95),
    down_kernels=KERNELS,
)

#: Fixed LR degradations an eval may report (``eval.degradation``): ``config.data`` fields set
#: on the eval's LR; the kernel is ``eval.down_kernel``'s.
EVAL_DEGRADATIONS: dict[str, dict[str, Any]] = {
    'degraded': dict(blur_sigma=1.0, noise_sigma=10 / GREY_LEVELS, jpeg_quality=70),
}


def apply_random_degradation(data: Any) -> None:
    """Switches ``config.data`` to per-image random degradation with :data:`TRAINING`'s ranges
    (the fixed blur, noise and JPEG fields off: the draws replace them)."""
    data.update(random_degradation=True, blur_sigma=0.0, noise_sigma=0.0, jpeg_quality=0)
    data.update(TRAINING)


def eval_degradation(name: str) -> dict[str, Any]:
    """The ``config.data`` fields of fixed eval degradation ``name`` (``''``: none)."""
    if not name:
        return {}
    if name not in EVAL_DEGRADATIONS:
        raise ValueError(
            f'config.eval.degradation={name!r} unknown; known: {sorted(EVAL_DEGRADATIONS)} '
            "or '' (the data's own LR)"
        )
    return dict(EVAL_DEGRADATIONS[name])
