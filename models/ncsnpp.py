"""NCSN++ and DDPM++ (port of score_sde's Flax ``models/ncsnpp.py``, explicit fields).

Differences from score_sde, all deliberate:

* options are dataclass fields instead of a ``ConfigDict``; spatial resolutions come from the
  input shape (no ``image_size``);
* no ``scale_by_sigma`` and no ``sigmas`` table: the raw network output is returned and the
  caller's score function divides by sigma where its SDE needs it;
* no ``2 * x - 1`` recentring (score_sde's ``config.data.centered``): the caller feeds the data
  range it trains on;
* the output (and the ``output_skip`` pyramid) has ``out_channels`` channels rather than the
  input's channel count, since the input is the noisy HR image concatenated with its condition;
* ``dtype`` sets the compute dtype; parameters stay float32 and the output is float32;
* ``conv_grads`` sets how convolution gradients are written (``models.conv``): the same values,
  but 'loops' keeps parameter gradients through a solver loop fast on XLA CPU.
"""

from __future__ import annotations

import types
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from models import conv as conv_lib
from models import layers, layerspp, rrdb
from models.layers import conv3x3, default_init, group_norm
from models.utils import MODELS, ScoreNetwork

_CHOICES = types.MappingProxyType(
    {
        'resblock_type': ('ddpm', 'biggan'),
        'progressive': ('none', 'output_skip', 'residual'),
        'progressive_input': ('none', 'input_skip', 'residual'),
        'progressive_combine': ('sum', 'cat'),
        'attention_type': ('ddpm',),
        'embedding_type': ('fourier', 'positional'),
        'conv_grads': tuple(conv_lib.GRADIENTS),
    }
)

act = nn.swish
# Parameter scopes of the LR branch, read by ``regress``.
LR_ENCODER, LR_REGRESSION = 'lr_encoder', 'lr_regression'


@MODELS.register('ncsnpp')
class NCSNpp(ScoreNetwork):
    """NCSN++: U-Net score model. ``__call__(x [B,H,W,C], time_label [B], train, lr)``.

    ``lr`` (the LR image) is read only with the LR encoder on (``lr_encoder_nf > 0``); the
    output then has ``out_channels`` plus one LR-channel image per ``aux_heads``.

    ``embedding_type='fourier'`` embeds ``log(time_label)`` (VE: pass sigma);
    ``'positional'`` embeds ``time_label`` itself (VP: pass ``999 * t``).
    """

    nf: int = 128
    ch_mult: Sequence[int] = (1, 2, 2, 2)
    num_res_blocks: int = 2
    attn_resolutions: Sequence[int] = (16,)
    dropout: float = 0.0
    resamp_with_conv: bool = True
    fir: bool = True
    fir_kernel: Sequence[int] = (1, 3, 3, 1)
    skip_rescale: bool = True
    resblock_type: str = 'biggan'
    progressive: str = 'none'
    progressive_input: str = 'none'
    progressive_combine: str = 'sum'
    attention_type: str = 'ddpm'
    embedding_type: str = 'fourier'
    fourier_scale: float = 16.0
    init_scale: float = 0.0
    conditional: bool = True
    out_channels: int = 3
    # LR encoder (``models.rrdb``, ECDP/SRDiff): 0 turns it off. Its features of the LR image
    # are added to every level of the downsampling path, and its regression estimate of the HR
    # image is returned after the ``out_channels`` (the ``aux_heads``).
    lr_encoder_nf: int = 0
    lr_encoder_blocks: int = 2
    lr_encoder_growth: int = 16
    dtype: Any = jnp.float32
    # How convolution gradients are written (``models.conv.GRADIENTS``; config.compute).
    conv_grads: str = 'lax'

    def __post_init__(self) -> None:
        for field, options in _CHOICES.items():
            if getattr(self, field) not in options:
                raise ValueError(
                    f'{field}={getattr(self, field)!r} is not supported; options: {options}'
                )
        super().__post_init__()

    @property
    def aux_heads(self) -> tuple[str, ...]:
        """Outputs after the ``out_channels``, one image of the LR's channel count each."""
        return ('regression',) if self.lr_encoder_nf > 0 else ()

    @property
    def regress_scopes(self) -> tuple[str, ...]:
        return (LR_ENCODER, LR_REGRESSION) if self.lr_encoder_nf > 0 else ()

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        time_label: jax.Array,
        train: bool = False,
        lr: jax.Array | None = None,
    ) -> jax.Array:
        B, H, W, _ = x.shape
        factor = 2 ** (len(self.ch_mult) - 1)
        if H % factor or W % factor:
            raise ValueError(f'input size {H}x{W} is not divisible by {factor} (ch_mult)')
        time_label = jnp.broadcast_to(jnp.asarray(time_label, jnp.float32), (B,))
        temb = self._embed_time(time_label)
        x = x.astype(self._dtype)
        lr_feats, regression = self._lr_branch(lr, (H, W))
        hs = self._encode(x, temb, train, lr_feats)
        h = self._resblock()(hs[-1], temb, train)
        h = self._attn()(h)
        h = self._resblock()(h, temb, train)
        h = self._decode(h, hs, temb, train).astype(jnp.float32)
        return h if regression is None else jnp.concatenate([h, regression], axis=-1)

    def _lr_branch(
        self, lr: jax.Array | None, hr_size: tuple[int, int]
    ) -> tuple[jax.Array | None, jax.Array | None]:
        """The LR encoder's features and regression estimate (``None, None`` when off)."""
        if self.lr_encoder_nf <= 0:
            return None, None
        if lr is None:
            raise ValueError(
                f'model.lr_encoder_nf={self.lr_encoder_nf} needs the LR image: call the '
                "network with lr=cond['lr']"
            )
        feats = self._lr_encoder(name=LR_ENCODER)(lr)
        head = rrdb.RegressionHead(self._dtype, self._conv, name=LR_REGRESSION)
        return feats, head(feats, lr.astype(jnp.float32), hr_size)

    def _lr_encoder(self, **scope: Any) -> rrdb.LREncoder:
        """The encoder: ``name=`` inside ``__call__``, ``parent=None`` (standalone) outside."""
        return rrdb.LREncoder(
            self.lr_encoder_nf,
            self.lr_encoder_blocks,
            self.lr_encoder_growth,
            self._dtype,
            self._conv,
            **scope,
        )

    def regress(self, params: Any, lr: jax.Array, hr_size: tuple[int, int]) -> jax.Array:
        """The LR encoder's regression estimate alone, from the network's parameters (call on
        the unbound model). The U-Net is not built, so its forward and backward passes cost
        nothing; through ``__call__`` the backward pass would run the U-Net on zero cotangents.
        """
        if self.lr_encoder_nf <= 0:
            return ScoreNetwork.regress(self, params, lr, hr_size)
        feats = self._lr_encoder(parent=None).apply({'params': params[LR_ENCODER]}, lr)
        head = rrdb.RegressionHead(self._dtype, self._conv, parent=None)
        return head.apply({'params': params[LR_REGRESSION]}, feats, lr.astype(jnp.float32), hr_size)

    def _add_lr_features(self, h: jax.Array, lr_feats: jax.Array | None) -> jax.Array:
        """``h`` plus the LR features resized to its resolution and projected to its width."""
        if lr_feats is None:
            return h
        b, height, width, _ = h.shape
        resized = jax.image.resize(
            lr_feats, (b, height, width, lr_feats.shape[-1]), 'bilinear'
        ).astype(h.dtype)
        proj = nn.Conv(h.shape[-1], (1, 1), dtype=self._dtype, conv_general_dilated=self._conv)
        return h + proj(resized)

    @property
    def _dtype(self) -> jnp.dtype:
        return jnp.dtype(self.dtype)

    @property
    def _conv(self) -> conv_lib.ConvFn:
        return conv_lib.gradients(self.conv_grads)

    def _embed_time(self, time_label: jax.Array) -> jax.Array | None:
        if self.embedding_type == 'fourier':
            proj = layerspp.GaussianFourierProjection(self.nf, scale=self.fourier_scale)
            temb = proj(jnp.log(time_label))
        else:
            temb = layers.get_timestep_embedding(time_label, self.nf)
        if not self.conditional:
            return None
        temb = nn.Dense(self.nf * 4, kernel_init=default_init(), dtype=self._dtype)(temb)
        return nn.Dense(self.nf * 4, kernel_init=default_init(), dtype=self._dtype)(act(temb))

    def _resblock(
        self, out_ch: int | None = None, up: bool = False, down: bool = False
    ) -> nn.Module:
        common = dict(
            act=act,
            out_ch=out_ch,
            dropout=self.dropout,
            init_scale=self.init_scale,
            skip_rescale=self.skip_rescale,
            dtype=self._dtype,
            conv=self._conv,
        )
        if self.resblock_type == 'ddpm':
            return layerspp.ResnetBlockDDPMpp(**common)
        return layerspp.ResnetBlockBigGANpp(
            up=up, down=down, fir=self.fir, fir_kernel=self.fir_kernel, **common
        )

    def _attn(self) -> layerspp.AttnBlockpp:
        return layerspp.AttnBlockpp(
            init_scale=self.init_scale, skip_rescale=self.skip_rescale, dtype=self._dtype
        )

    def _resample(
        self, kind: str, out_ch: int | None = None, with_conv: bool | None = None
    ) -> nn.Module:
        """An Upsample/Downsample layer; ``with_conv`` defaults to ``resamp_with_conv``."""
        cls = layerspp.Upsample if kind == 'up' else layerspp.Downsample
        with_conv = self.resamp_with_conv if with_conv is None else with_conv
        return cls(
            out_ch=out_ch,
            with_conv=with_conv,
            fir=self.fir,
            fir_kernel=self.fir_kernel,
            dtype=self._dtype,
            conv=self._conv,
        )

    def _encode(
        self, x: jax.Array, temb: jax.Array | None, train: bool, lr_feats: jax.Array | None
    ) -> list[jax.Array]:
        """Downsampling path; returns the skip activations (last one feeds the middle)."""
        input_pyramid = x if self.progressive_input != 'none' else None
        hs = [conv3x3(x, self.nf, dtype=self._dtype, conv=self._conv)]
        num_resolutions = len(self.ch_mult)
        for i_level in range(num_resolutions):
            hs[-1] = self._add_lr_features(hs[-1], lr_feats)
            for _ in range(self.num_res_blocks):
                h = self._resblock(out_ch=self.nf * self.ch_mult[i_level])(hs[-1], temb, train)
                if h.shape[1] in self.attn_resolutions:
                    h = self._attn()(h)
                hs.append(h)
            if i_level != num_resolutions - 1:
                if self.resblock_type == 'ddpm':
                    h = self._resample('down')(hs[-1])
                else:
                    h = self._resblock(down=True)(hs[-1], temb, train)
                h, input_pyramid = self._merge_input_pyramid(h, input_pyramid)
                hs.append(h)
        return hs

    def _merge_input_pyramid(
        self, h: jax.Array, input_pyramid: jax.Array | None
    ) -> tuple[jax.Array, jax.Array | None]:
        if self.progressive_input == 'input_skip':
            input_pyramid = self._resample('down', with_conv=False)(input_pyramid)
            h = layerspp.Combine(
                method=self.progressive_combine, dtype=self._dtype, conv=self._conv
            )(input_pyramid, h)
        elif self.progressive_input == 'residual':
            input_pyramid = self._resample('down', out_ch=h.shape[-1], with_conv=True)(
                input_pyramid
            )
            input_pyramid = layerspp.residual(input_pyramid, h, self.skip_rescale)
            h = input_pyramid
        return h, input_pyramid

    def _decode(
        self, h: jax.Array, hs: list[jax.Array], temb: jax.Array | None, train: bool
    ) -> jax.Array:
        """Upsampling path (consumes ``hs``) and output head."""
        pyramid = None
        num_resolutions = len(self.ch_mult)
        for i_level in reversed(range(num_resolutions)):
            for _ in range(self.num_res_blocks + 1):
                h = jnp.concatenate([h, hs.pop()], axis=-1)
                h = self._resblock(out_ch=self.nf * self.ch_mult[i_level])(h, temb, train)
            if h.shape[1] in self.attn_resolutions:
                h = self._attn()(h)
            if self.progressive != 'none':
                h, pyramid = self._output_pyramid(h, pyramid, i_level == num_resolutions - 1)
            if i_level != 0:
                if self.resblock_type == 'ddpm':
                    h = self._resample('up')(h)
                else:
                    h = self._resblock(up=True)(h, temb, train)
        assert not hs
        if self.progressive == 'output_skip':
            return pyramid
        h = act(group_norm(h, self._dtype))
        return conv3x3(
            h, self.out_channels, init_scale=self.init_scale, dtype=self._dtype, conv=self._conv
        )

    def _output_pyramid(
        self, h: jax.Array, pyramid: jax.Array | None, top: bool
    ) -> tuple[jax.Array, jax.Array]:
        """Progressive output growing ('output_skip' or 'residual') at one resolution."""
        if self.progressive == 'output_skip':
            if not top:
                pyramid = self._resample('up', with_conv=False)(pyramid)
            out = conv3x3(
                act(group_norm(h, self._dtype)),
                self.out_channels,
                init_scale=self.init_scale,
                dtype=self._dtype,
                conv=self._conv,
            )
            return h, out if top else pyramid + out
        if top:
            pyramid = conv3x3(
                act(group_norm(h, self._dtype)), h.shape[-1], dtype=self._dtype, conv=self._conv
            )
            return h, pyramid
        pyramid = self._resample('up', out_ch=h.shape[-1], with_conv=True)(pyramid)
        pyramid = layerspp.residual(pyramid, h, self.skip_rescale)
        return pyramid, pyramid


@MODELS.register('ddpmpp')
class DDPMpp(NCSNpp):
    """DDPM++ defaults of score_sde's ``configs/vp/cifar10_ddpmpp_continuous.py``.

    Same network as NCSN++ (BigGAN blocks, skip rescaling) but without FIR resampling, with
    positional (``999 * t``) embeddings and 4 residual blocks per resolution.
    """

    num_res_blocks: int = 4
    fir: bool = False
    embedding_type: str = 'positional'
