"""LongLive 2.0's sampler: Wan's flow-matching UniPC (order 2, bh2, x0 prediction, lower order at the last step,
the corrector from the second step on, final sigma 0), a fresh sampler per block.

Every update is linear in the block's noise and the network's outputs, so a run of n steps is a fixed table of
coefficients: the input of step i is eps + sum_j c[i][j] v_j, and the block's output eps + sum_j c[n][j] v_j.
`unipc_table` computes that table once, in float64, by running the sampler's recursion on coefficient vectors
(LONGLIVE_V2.md section 5 gives the 4-step values it must reproduce).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

SHIFT = 5.0
TRAIN_STEPS = 1000
SIGMA_MAX = 0.999


@dataclasses.dataclass(frozen=True)
class UniPCTable:
    """timesteps: the network's timestep at each step (integers, passed as floats); sigmas: the sampler's, with a
    final 0; steps[i]: the coefficients of eps, v_0, ..., v_{n-1} in the input of step i; output: in the result."""

    timesteps: tuple[int, ...]
    sigmas: tuple[float, ...]
    steps: tuple[tuple[float, ...], ...]
    output: tuple[float, ...]


def schedule(steps: int, shift: float = SHIFT) -> tuple[list[int], list[float]]:
    """Timesteps int(1000 s') and float32 sigmas s' (+ a final 0) for s = linspace(0.999, 0, n + 1)[:-1] (float32)
    shifted to s' = shift s / (1 + (shift - 1) s) (float64): the roundings of the recorded runs' table."""
    s = np.linspace(SIGMA_MAX, 0.0, steps + 1, dtype=np.float32)[:-1].astype(np.float64)
    shifted = shift * s / (1 + (shift - 1) * s)
    timesteps = [int(t) for t in (TRAIN_STEPS * shifted).astype(np.int64)]
    sigmas = [float(np.float32(x)) for x in shifted] + [0.0]
    return timesteps, sigmas


def unipc_table(steps: int = 4, shift: float = SHIFT) -> UniPCTable:
    timesteps, sigmas = schedule(steps, shift)
    basis = np.eye(steps + 1)  # eps, v_0 .. v_{n-1}
    sample = basis[0]
    inputs, outputs = [], []  # the network's input and its x0 prediction at each step
    last_sample, order = None, 0
    for i in range(steps):
        inputs.append(sample)
        x0 = sample - sigmas[i] * basis[1 + i]
        if i > 0:  # the corrector, of the order the previous step's predictor had
            sample = _corrector(x0, outputs, last_sample, sample, sigmas, i, order)
        outputs.append(x0)
        order = min(2, steps - i, len(outputs))  # lower order at the last step, and while warming up
        last_sample = sample
        sample = _predictor(outputs, sample, sigmas, i, order)
    return UniPCTable(tuple(timesteps), tuple(sigmas), tuple(tuple(float(c) for c in x[1:]) for x in inputs),
                      tuple(float(c) for c in sample[1:]))


def _lambda(sigma: float) -> float:
    """log(alpha / sigma) with alpha = 1 - sigma (flow matching); +inf at sigma 0."""
    return math.inf if sigma == 0 else math.log(1 - sigma) - math.log(sigma)


def _phis(h: float, order: int) -> tuple[float, float, list[float]]:
    """hh = -h (x0 prediction), h_phi_1 = expm1(hh), B_h = expm1(hh) (bh2), and b_k for k = 1..order."""
    hh = -h
    h_phi_1 = math.expm1(hh)
    b, h_phi_k, factorial = [], h_phi_1 / hh - 1, 1
    for k in range(1, order + 1):
        b.append(h_phi_k * factorial / h_phi_1)
        factorial *= k + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    return h_phi_1, h_phi_1, b


def _predictor(outputs: list, sample, sigmas: list[float], i: int, order: int):
    """UniP-bh2: the sample at sigma[i + 1] from the x0 predictions so far."""
    sigma_t, sigma_s0 = sigmas[i + 1], sigmas[i]
    m0 = outputs[-1]
    h = _lambda(sigma_t) - _lambda(sigma_s0)
    h_phi_1, b_h, _ = _phis(h, order)
    x_t = sigma_t / sigma_s0 * sample - (1 - sigma_t) * h_phi_1 * m0
    if order == 2:  # rho_p = 0.5 for order 2
        rk = (_lambda(sigmas[i - 1]) - _lambda(sigma_s0)) / h
        x_t = x_t - (1 - sigma_t) * b_h * 0.5 * (outputs[-2] - m0) / rk
    return x_t


def _corrector(model_t, outputs: list, last_sample, this_sample, sigmas: list[float], i: int, order: int):
    """UniC-bh2: corrects the sample at sigma[i] with the x0 prediction made there (model_t)."""
    sigma_t, sigma_s0 = sigmas[i], sigmas[i - 1]
    m0 = outputs[-1]
    h = _lambda(sigma_t) - _lambda(sigma_s0)
    h_phi_1, b_h, b = _phis(h, order)
    rks, d1s = [], []
    for k in range(1, order):
        rk = (_lambda(sigmas[i - 1 - k]) - _lambda(sigma_s0)) / h
        rks.append(rk)
        d1s.append((outputs[-(k + 1)] - m0) / rk)
    rks.append(1.0)
    if order == 1:
        rhos = [0.5]
    else:
        r = np.array([[rk ** (k - 1) for rk in rks] for k in range(1, order + 1)])
        rhos = list(np.linalg.solve(r, np.array(b)))
    x_t = sigma_t / sigma_s0 * last_sample - (1 - sigma_t) * h_phi_1 * m0
    corr = sum(rho * d for rho, d in zip(rhos[:-1], d1s)) if d1s else 0.0
    return x_t - (1 - sigma_t) * b_h * (corr + rhos[-1] * (model_t - m0))
