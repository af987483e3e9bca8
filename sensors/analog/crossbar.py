"""Analog matrix-vector products on a simulated phase-change-memory (PCM) crossbar.

Each weight is a differential pair of PCM conductances (G+ on one column, G- on its twin); an input
vector, converted by the row DACs, drives the rows, and each column pair's current difference,
converted by the column ADC, is one output. The device model is the published PCM statistical model
(Nandakumar et al., ICECS 2019; Joshi et al., Nature Communications 11:2473, 2020), fitted on a
million-device array of doped-GST PCM. With g = G_T / G_max the programmed target, normalised:

* programming noise (iterative write-verify): G_prog = G_T + N(0, sigma_prog), sigma_prog =
  max(0.2635 + 1.9650 g - 1.1731 g^2, 0) uS for G_max = 25 uS (scaled with G_max), clipped at 0;
* drift: G(t) = G_prog ((t + t0) / t0)^-nu, t0 = 20 s after programming, nu drawn per device from
  N(mu_nu, sigma_nu), mu_nu = clip(-0.0155 ln g + 0.0244, 0.049, 0.1),
  sigma_nu = clip(-0.0125 ln g - 0.0059, 0.008, 0.045), folded at 0;
* 1/f read noise: sigma_nG(t) = G(t) Q_s sqrt(ln((t + t_read) / (2 t_read))), Q_s =
  min(0.0088 / g^0.65, 0.2), t_read = 250 ns.

The 1/f noise integrated from 1/t up to 1/(2 t_read) is split at the read interval (one tick):
fluctuations slower than a tick are frozen for the stream (drawn once per device, like the drift),
faster ones are drawn at every read. The two variances add up to the model's sigma_nG(t)^2. The
per-read part summed over a column is Gaussian with variance sum_i x_i^2 sigma_ij^2, so it is
drawn per output, not per device: one extra small matrix product per tick.

Global drift compensation (Joshi et al. 2020): right after programming and again at read time a
calibration input (all rows driven at full scale) is applied, and the ratio of the summed
|column outputs| rescales the layer's digitised output. Periphery: signed DAC inputs of
``dac_bits`` over [-1, 1], column ADC of ``adc_bits`` over +-``out_range`` (in weight units), and an
optional first-order IR drop that attenuates each device by its normalised wire distance from the
row driver and the column's sense amplifier.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from sensors.analog.config import CrossbarConfig

G_MAX_REF_US = 25.0            # G_max of the array the statistical model was fitted on
PROG_COEFF_US = (0.2635, 1.9650, -1.1731)  # sigma_prog polynomial in g = G_T / G_max, uS at G_max_ref
T0_S = 20.0                    # drift reference: time of the first read after programming
T_READ_S = 250e-9              # read pulse width
NU_MU = (-0.0155, 0.0244, 0.049, 0.1)      # slope on ln g, intercept, lower and upper clip
NU_SIGMA = (-0.0125, -0.0059, 0.008, 0.045)
Q_S = (0.0088, 0.65, 0.2)      # Q_s = min(a / g^b, cap)
G_FLOOR = 1e-6                 # g below this is read as this in the ln g and g^b fits (a reset device)


def prog_sigma_us(g_target_us: np.ndarray, g_max_us: float = G_MAX_REF_US) -> np.ndarray:
    """Standard deviation of the programmed conductance around its target, uS."""
    g = np.asarray(g_target_us, dtype=np.float64) / g_max_us
    c0, c1, c2 = PROG_COEFF_US
    return np.maximum(c0 + c1 * g + c2 * g * g, 0.0) * (g_max_us / G_MAX_REF_US)


def drift_nu_stats(g_target_us: np.ndarray, g_max_us: float = G_MAX_REF_US) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std-dev) of the drift exponent nu of devices programmed to ``g_target_us``."""
    ln_g = np.log(np.maximum(np.abs(np.asarray(g_target_us, dtype=np.float64)) / g_max_us, G_FLOOR))
    a, b, lo, hi = NU_MU
    mu = np.clip(a * ln_g + b, lo, hi)
    a, b, lo, hi = NU_SIGMA
    return mu, np.clip(a * ln_g + b, lo, hi)


def q_s(g_target_us: np.ndarray, g_max_us: float = G_MAX_REF_US) -> np.ndarray:
    """1/f noise amplitude Q_s of devices programmed to ``g_target_us`` (relative, dimensionless)."""
    g = np.maximum(np.abs(np.asarray(g_target_us, dtype=np.float64)) / g_max_us, G_FLOOR)
    a, b, cap = Q_S
    return np.minimum(a / g ** b, cap)


def read_noise_log(t_s: float) -> float:
    """ln((t + t_read) / (2 t_read)): the 1/f variance factor accumulated over a time span t."""
    return max(0.0, math.log((t_s + T_READ_S) / (2.0 * T_READ_S)))


def drift_factor(nu: np.ndarray, t_s: float) -> np.ndarray:
    """G(t) / G_prog for devices read ``t_s`` after programming (1 at t_s = 0)."""
    return ((t_s + T0_S) / T0_S) ** (-np.asarray(nu, dtype=np.float64))


def quantise_signed(x: np.ndarray, bits: int, full_scale: float) -> np.ndarray:
    """Clip to +-full_scale and round to 2^(bits-1)-1 steps per side (bits = 0: only the clip)."""
    y = np.clip(x, -full_scale, full_scale)
    if bits <= 0:
        return y
    steps = float(2 ** (bits - 1) - 1)
    scale = steps / full_scale
    return np.round(y * scale) / scale


@dataclass(frozen=True, slots=True)
class Programmed:
    """One crossbar after programming and drift to its read time: what a read sees."""

    g_plus: np.ndarray        # (n_rows, n_cols) uS at read time, static part of the read noise included
    g_minus: np.ndarray
    read_var: np.ndarray      # (n_rows, n_cols) per-read noise variance of G+ and G- together, uS^2
    beta: float               # uS per weight unit
    alpha: float              # drift-compensation gain applied to the digitised output (1 = none)


class CrossbarLayer:
    """y = act(W^T x + b) computed on a PCM crossbar; the bias is one more row driven at full scale.

    ``weights`` is (n_in, n_out). ``out_range`` is the column ADC's full scale in weight units (the
    layer's pre-activation range, fixed when the network was trained); ``in_range`` is the input
    level that maps to the DAC's full scale (the previous layer's ``out_range``: its ADC codes drive
    this layer's DACs), folded into the programmed weights. The chip is drawn from
    ``program_rng`` (programming noise, drift exponents, slow read noise); ``read_rng`` feeds the
    per-read noise in tick order, so the stream of reads does not depend on how ticks are chunked.
    """

    def __init__(self, weights: np.ndarray, bias: np.ndarray, *, cfg: CrossbarConfig, out_range: float,
                 relu: bool, program_rng: np.random.Generator, read_interval_s: float,
                 in_range: float = 1.0) -> None:
        w = np.asarray(weights, dtype=np.float64)
        b = np.asarray(bias, dtype=np.float64).reshape(1, -1)
        if w.ndim != 2 or b.shape[1] != w.shape[1]:
            raise ValueError(f"weights {w.shape} and bias {b.shape} do not make a layer")
        self.cfg = cfg
        self.relu = relu
        self.out_range = float(out_range)
        self.in_range = float(in_range)
        self.weights = np.vstack([w * self.in_range, b])  # the bias row
        self.n_in, self.n_out = w.shape
        self.programmed = program(self.weights, cfg, program_rng, read_interval_s)
        p = self.programmed
        self._g = ((p.g_plus - p.g_minus) / p.beta).astype(np.float64)
        self._read_sd_scale = 1.0 / p.beta
        self._noisy_reads = bool(np.any(p.read_var > 0))

    def __call__(self, x: np.ndarray, read_rng: np.random.Generator) -> np.ndarray:
        """(n, n_in) inputs in [-1, 1] -> (n, n_out) outputs (after ADC, compensation, activation)."""
        cfg = self.cfg
        v = quantise_signed(np.asarray(x, dtype=np.float64) / self.in_range, cfg.dac_bits, 1.0)
        v = np.hstack([v, np.ones((v.shape[0], 1))])
        y = v @ self._g
        if self._noisy_reads:
            sd = np.sqrt((v * v) @ self.programmed.read_var) * self._read_sd_scale
            y = y + sd * read_rng.standard_normal(y.shape)
        elif cfg.read_noise_scale > 0:
            read_rng.standard_normal(y.shape)  # keep the noise stream in step whatever the devices
        y = quantise_signed(y, cfg.adc_bits, self.out_range) * self.programmed.alpha
        return np.maximum(y, 0.0) if self.relu else y


def program(weights: np.ndarray, cfg: CrossbarConfig, rng: np.random.Generator,
            read_interval_s: float) -> Programmed:
    """Map weights to conductance pairs, program them, let them drift to ``cfg.drift_s`` and calibrate."""
    w = np.asarray(weights, dtype=np.float64)
    g_max = cfg.g_max_us
    w_max = float(np.max(np.abs(w))) or 1.0
    beta = g_max / w_max
    targets = [np.maximum(w, 0.0) * beta, np.maximum(-w, 0.0) * beta]
    if cfg.levels:
        step = g_max / max(cfg.levels - 1, 1)
        targets = [np.round(t / step) * step for t in targets]
    n_rows, n_cols = w.shape
    attenuation = _ir_attenuation(n_rows, n_cols, cfg.ir_drop)
    slow_log = max(0.0, read_noise_log(cfg.drift_s + T0_S) - read_noise_log(read_interval_s))
    fast_log = min(read_noise_log(read_interval_s), read_noise_log(cfg.drift_s + T0_S))
    at_t, at_0, read_var = [], [], np.zeros_like(w)
    for gt in targets:
        # Draw order is fixed (programming, drift, slow noise, per device pair), so a chip is a seed.
        g_prog = np.maximum(gt + cfg.prog_noise_scale * prog_sigma_us(gt, g_max) * rng.standard_normal(gt.shape), 0.0)
        mu, sd = drift_nu_stats(gt, g_max)
        nu = np.abs(mu + sd * rng.standard_normal(gt.shape)) * cfg.drift_scale
        g_drift = g_prog * drift_factor(nu, cfg.drift_s)
        q = q_s(gt, g_max) * cfg.read_noise_scale
        slow = rng.standard_normal(gt.shape)
        g_t = np.maximum(g_drift + g_drift * q * math.sqrt(slow_log) * slow, 0.0)
        read_var += (g_t * q) ** 2 * fast_log
        at_t.append(g_t * attenuation)
        at_0.append(g_prog * attenuation)
    alpha = 1.0
    if cfg.drift_compensation:
        # Calibration read: every row at full scale; summed |column outputs| then and now.
        ref = np.abs(at_0[0].sum(axis=0) - at_0[1].sum(axis=0)).sum()
        now = np.abs(at_t[0].sum(axis=0) - at_t[1].sum(axis=0)).sum()
        alpha = float(ref / now) if now > 0 else 1.0
    return Programmed(g_plus=at_t[0], g_minus=at_t[1], read_var=read_var * attenuation ** 2, beta=beta,
                      alpha=alpha)


def _ir_attenuation(n_rows: int, n_cols: int, ir_drop: float) -> np.ndarray:
    """First-order IR drop: device (i, j) loses ``ir_drop`` times its normalised wire distance from
    the row driver (column index) and from the sense amplifier (row index)."""
    if ir_drop == 0:
        return np.ones((n_rows, n_cols))
    i = (np.arange(n_rows) + 1.0) / n_rows
    j = (np.arange(n_cols) + 1.0) / n_cols
    return 1.0 - ir_drop * 0.5 * (i[:, None] + j[None, :])
