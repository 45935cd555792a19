"""The probability-flow ODE, solved with diffrax: for sampling and for losses through sampling.

One adaptive solver serves both (diffrax: Dormand-Prince or Tsitouras 5(4) with PID step
control, jit- and vmap-able, on device). Samples are solved independently under ``vmap``, so
each takes its own steps and a sample never depends on the rest of the batch. Reaching
``max_steps`` is never silent: :func:`solve` returns whether each solve finished and the
samplers report the count of unfinished ones (``sampling.check_finished`` raises on it).

Gradients (ECDP's image-quality loss): ``adjoint='recursive_checkpoint'`` differentiates the
discrete solution exactly (what plain backprop through the solver computes) with binomial
checkpointing, so memory is ``O(checkpoints)`` whatever the number of steps;
``'backsolve'`` is the continuous adjoint (O(1) memory, gradients exact only to the solver's
tolerance: torchdiffeq's ``odeint_adjoint``, which the ECDP code uses). Plain backprop, which
stores every step, is ``'recursive_checkpoint'`` with as many checkpoints as steps.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import diffrax
import jax
import jax.numpy as jnp

from utils.registry import Registry

# ``field(t, y, args) -> dy/dt`` for one sample. Whatever a gradient must reach goes in
# ``args`` (the continuous adjoint cannot differentiate closed-over values).
VectorField = Callable[[jax.Array, jax.Array, Any], jax.Array]

# Name -> (diffrax solver, evaluations per step, evaluations before the first step), counted
# against diffrax in tests/test_ode.py. Dopri5 and Tsit5 are 7-stage 5(4) FSAL pairs, Bosh3 a
# 4-stage 3(2) FSAL pair, Heun 2(1); Euler has no error estimate (fixed steps only).
SOLVERS = Registry('ODE solver')
SOLVERS.register('dopri5')((diffrax.Dopri5, 6, 1))
SOLVERS.register('tsit5')((diffrax.Tsit5, 6, 1))
SOLVERS.register('bosh3')((diffrax.Bosh3, 3, 1))
SOLVERS.register('heun')((diffrax.Heun, 2, 0))
SOLVERS.register('euler')((diffrax.Euler, 1, 0))

ADJOINTS = Registry('ODE adjoint')
ADJOINTS.register('recursive_checkpoint')(
    lambda checkpoints: diffrax.RecursiveCheckpointAdjoint(checkpoints=checkpoints or None)
)
ADJOINTS.register('backsolve')(lambda checkpoints: diffrax.BacksolveAdjoint())


@dataclasses.dataclass(frozen=True)
class ODEOptions:
    """How to solve: ``solver`` name, tolerances, step bound and the gradient method.

    ``fixed_steps`` > 0 takes that many equal steps instead of adapting (cheap, predictable
    cost inside a training step); ``checkpoints`` (0: diffrax's default, which grows slowly
    with ``max_steps``) bounds the memory of ``adjoint='recursive_checkpoint'``.
    """

    solver: str = 'dopri5'
    rtol: float = 1e-5
    atol: float = 1e-5
    max_steps: int = 4096
    fixed_steps: int = 0
    adjoint: str = 'recursive_checkpoint'
    checkpoints: int = 0
    # Fixed steps only ('euler', 'heun'): the steps as straight-line code, each rematerialised
    # in the backward pass (memory: one state per step), instead of diffrax's loop. XLA on CPU
    # runs a loop body's backward pass about 15x slower than the same code unrolled (the
    # quality-loss gradient: 90 s in a lax.scan, 6 s unrolled; bench/results/quality_step.md),
    # unless the network's convolutions use ``config.compute.conv_grads='loops'``, which is
    # faster than unrolling and compiles 7.3x faster.
    unroll: bool = False


def solve(
    field: VectorField, y0: jax.Array, t0: Any, t1: Any, opts: ODEOptions, args: Any = None
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``y(t1)`` of ``dy/dt = field(t, y, args)`` from ``y(t0) = y0``; its NFE; whether it
    finished.

    One unbatched state; ``vmap`` it over a batch. ``t1 < t0`` integrates backwards.
    """
    if opts.unroll:
        return _solve_unrolled(field, y0, t0, t1, opts, args)
    solver_cls, evals_per_step, setup_evals = SOLVERS.get(opts.solver)
    adaptive = opts.fixed_steps <= 0
    if adaptive and opts.solver == 'euler':
        raise ValueError('the euler ODE solver has no error estimate: set fixed steps')
    t0, t1 = jnp.asarray(t0, y0.dtype), jnp.asarray(t1, y0.dtype)
    if adaptive:
        controller, dt0 = diffrax.PIDController(rtol=opts.rtol, atol=opts.atol), None
    else:
        controller, dt0 = diffrax.ConstantStepSize(), (t1 - t0) / opts.fixed_steps
    solution = diffrax.diffeqsolve(
        diffrax.ODETerm(field),
        solver_cls(),
        t0,
        t1,
        dt0,
        y0,
        args,
        stepsize_controller=controller,
        adjoint=ADJOINTS.get(opts.adjoint)(opts.checkpoints),
        max_steps=opts.max_steps if adaptive else max(opts.fixed_steps, 1),
        throw=False,
    )
    nfe = solution.stats['num_steps'] * evals_per_step + setup_evals
    finished = solution.result == diffrax.RESULTS.successful
    return solution.ys[-1], jnp.asarray(nfe, jnp.int32), finished


def _euler_step(field: VectorField, t0: Any, y: jax.Array, h: Any, args: Any) -> jax.Array:
    return y + h * field(t0, y, args)


def _heun_step(field: VectorField, t0: Any, y: jax.Array, h: Any, args: Any) -> jax.Array:
    slope = field(t0, y, args)
    return y + 0.5 * h * (slope + field(t0 + h, y + h * slope, args))


# Explicit steps of the fixed-step solvers that ``unroll`` supports: the same updates as
# diffrax's Euler and Heun with a constant step (tests/test_ode.py compares them).
UNROLLED_STEPS = {'euler': (_euler_step, 1), 'heun': (_heun_step, 2)}


def _solve_unrolled(
    field: VectorField, y0: jax.Array, t0: Any, t1: Any, opts: ODEOptions, args: Any
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """:func:`solve` with ``opts.unroll``: ``fixed_steps`` steps of Euler or Heun written out,
    each under ``jax.checkpoint`` (its activations are recomputed in the backward pass)."""
    if opts.fixed_steps <= 0 or opts.solver not in UNROLLED_STEPS:
        raise ValueError(
            f'ODE unroll needs fixed steps and one of {sorted(UNROLLED_STEPS)} '
            f'(got solver={opts.solver!r}, fixed_steps={opts.fixed_steps})'
        )
    step_fn, evals_per_step = UNROLLED_STEPS[opts.solver]
    step = jax.checkpoint(lambda t, y, h, a: step_fn(field, t, y, h, a))
    t0, t1 = jnp.asarray(t0, y0.dtype), jnp.asarray(t1, y0.dtype)
    h = (t1 - t0) / opts.fixed_steps
    y = y0
    for i in range(opts.fixed_steps):
        y = step(t0 + i * h, y, h, args)
    nfe = jnp.asarray(opts.fixed_steps * evals_per_step, jnp.int32)
    return y, nfe, jnp.asarray(True)
