"""Faces in images: detection, alignment into the training crop geometry, and paste-back.

The layer below data, SR and evaluation (it imports none of them). Submodules, imported
explicitly (nothing heavy is loaded here):

- :mod:`faces.onnx_models`: the bundled ONNX models (YuNet, SFace) and their loading.
- :mod:`faces.detect`: YuNet face detection (:class:`~faces.detect.Detection`) and the choice
  of the central face.
- :mod:`faces.align`: landmark templates, similarity transforms, warps into a crop
  (:func:`~faces.align.crop_matrix`, :func:`~faces.align.warp_face`) and the HR-decided
  alignment of the identity metrics.
- :mod:`faces.paste`: pasting restored crops back into the (upscaled) photo with a feathered
  mask.
- :mod:`faces.wild`: finding faces in arbitrary photos (detector filters, faces given in a CSV).
- :mod:`faces.lfw`: LFW deep-funneled images: pair list and alignment into the crop geometry.
- :mod:`faces.canonical`: how the canonical landmarks were derived
  (``python -m faces.canonical --split test``).

Pixel conventions (everywhere in this package): images are RGB ``[H, W, C]``; coordinates
are ``(x, y)`` in pixels with pixel *centres* at integers (OpenCV's), so pixel ``(0, 0)``
covers ``[-0.5, 0.5]^2``. A ``[2, 3]`` matrix ``M`` maps a point ``p`` of one image to
``M @ [x, y, 1]`` in another.
"""
