"""Room impulse responses, in numpy: a shoebox image-source model and a statistical one.

Image-source rooms (:func:`rir`, Allen & Berkley, 1979): early reflections come from the images
(exact delays, so the comb filtering and the direct-to-reverberant ratio depend on the geometry);
the late tail, where images become too many to enumerate cheaply, is exponentially decaying
noise with the target RT60, matched in level to the image-source energy where the two meet.
This hybrid is the usual trade-off in room simulators (pyroomacoustics does the same with its
ray-tracing tail).

Statistical rooms (:func:`statistical_rir`) have no geometry: the direct path and then the late
tail alone, exponentially decaying noise at a random level. The training pipeline's clips and
evaluation scenes are reverberated this way.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from gate_core.audio import SAMPLE_RATE

SPEED_OF_SOUND = 343.0
EARLY_S = 0.08  # image sources cover this much after the direct path


@dataclass(frozen=True, slots=True)
class Room:
    dims: tuple[float, float, float]
    source: tuple[float, float, float]
    mic: tuple[float, float, float]
    rt60_s: float

    @property
    def distance_m(self) -> float:
        return float(np.linalg.norm(np.subtract(self.source, self.mic)))

    def describe(self) -> dict[str, object]:
        d = asdict(self)
        return {k: (tuple(round(x, 3) for x in v) if isinstance(v, tuple) else round(v, 3)) for k, v in d.items()}


def random_room(rng: np.random.Generator, *, rt60_s: tuple[float, float] = (0.15, 0.8)) -> Room:
    """A living-room-to-hall sized shoebox with source and mic at least 0.5 m from walls and each other."""
    dims = (float(rng.uniform(3, 10)), float(rng.uniform(3, 8)), float(rng.uniform(2.4, 4)))
    def point(h: tuple[float, float]) -> tuple[float, float, float]:
        return (float(rng.uniform(0.5, dims[0] - 0.5)), float(rng.uniform(0.5, dims[1] - 0.5)), float(rng.uniform(*h)))
    src = point((1.0, 1.9))
    mic = point((0.7, 1.5))
    while np.linalg.norm(np.subtract(src, mic)) < 0.5:
        mic = point((0.7, 1.5))
    return Room(dims, src, mic, float(rng.uniform(*rt60_s)))


def rir(room: Room, rng: np.random.Generator, *, fs: int = SAMPLE_RATE, max_len_s: float = 1.0) -> np.ndarray:
    """The impulse response from source to mic, float32, direct path at index ``round(d/c*fs)``
    with amplitude 1 (so convolving keeps the direct sound's level)."""
    L = np.asarray(room.dims)
    s = np.asarray(room.source)
    m = np.asarray(room.mic)
    volume = float(np.prod(L))
    surface = 2 * (L[0] * L[1] + L[0] * L[2] + L[1] * L[2])
    # Sabine's formula gives one absorption for all walls; beta is the pressure reflection.
    alpha = min(0.99, 0.161 * volume / (surface * room.rt60_s))
    beta = np.sqrt(1 - alpha)
    n_len = int(min(max_len_s, 1.2 * room.rt60_s + 0.05) * fs)
    direct = room.distance_m
    early_d = direct + EARLY_S * SPEED_OF_SOUND
    order = int(np.ceil(early_d / (2 * L.min()))) + 1

    r = np.arange(-order, order + 1)
    axes = []
    for ax in range(3):
        # Image coordinate along one axis for (r, q): (1 - 2q) * s + 2 r L, with |r - q| + |r| reflections.
        q = np.array([0, 1])
        pos = (1 - 2 * q[None, :]) * s[ax] + 2 * r[:, None] * L[ax] - m[ax]
        refl = np.abs(r[:, None] - q[None, :]) + np.abs(r[:, None])
        axes.append((pos.ravel(), refl.ravel()))
    (px, rx), (py, ry), (pz, rz) = axes
    dist = np.sqrt(px[:, None, None] ** 2 + py[None, :, None] ** 2 + pz[None, None, :] ** 2).ravel()
    refl = (rx[:, None, None] + ry[None, :, None] + rz[None, None, :]).ravel()
    keep = dist <= early_d
    dist, refl = dist[keep], refl[keep]
    amp = beta ** refl * direct / dist
    delay = dist / SPEED_OF_SOUND * fs
    h = np.zeros(n_len + 2)
    i0 = np.floor(delay).astype(int)
    frac = delay - i0
    ok = i0 < n_len
    # Linear split between neighbouring samples: a cheap fractional delay that keeps energy local.
    np.add.at(h, i0[ok], amp[ok] * (1 - frac[ok]))
    np.add.at(h, i0[ok] + 1, amp[ok] * frac[ok])
    h = h[:n_len]

    t_join = int(early_d / SPEED_OF_SOUND * fs)
    if t_join < n_len:
        decay = np.exp(-6.9078 * np.arange(n_len) / (room.rt60_s * fs))  # -60 dB over RT60
        win = slice(max(int(direct / SPEED_OF_SOUND * fs) + 1, t_join - int(0.02 * fs)), t_join)
        early_energy = float(np.mean(h[win] ** 2 / decay[win] ** 2)) if win.stop > win.start else 0.0
        tail = rng.standard_normal(n_len) * decay * np.sqrt(early_energy)
        fade = np.clip((np.arange(n_len) - (t_join - int(0.01 * fs))) / (0.01 * fs), 0, 1)
        h = h * (1 - fade) + tail * fade + h * fade * (np.arange(n_len) < t_join)
    return h.astype(np.float32)


def statistical_rir(rng: np.random.Generator, *, rt60_s: tuple[float, float] = (0.2, 0.8),
                    fs: int = SAMPLE_RATE) -> np.ndarray:
    """A direct path of amplitude 1 at index 0, then noise decaying by 60 dB over a random RT60 in
    ``rt60_s``, starting 10-50 % of the direct path's amplitude; one RT60 long, float64."""
    rt60 = rng.uniform(*rt60_s)
    n = int(rt60 * fs)
    t = np.arange(n) / fs
    ir = rng.standard_normal(n) * np.exp(-6.9 * t / rt60) * rng.uniform(0.1, 0.5)
    ir[0] = 1.0
    return ir


def rt60_estimate(h: np.ndarray, fs: int = SAMPLE_RATE) -> float:
    """RT60 from Schroeder backward integration, fitted between -5 and -25 dB (T20 x 3)."""
    e = np.cumsum((h.astype(np.float64) ** 2)[::-1])[::-1]
    edc = 10 * np.log10(e / e[0] + 1e-30)
    i5, i25 = int(np.argmax(edc <= -5)), int(np.argmax(edc <= -25))
    if i25 <= i5:
        return float("nan")
    t = np.arange(i5, i25) / fs
    slope = np.polyfit(t, edc[i5:i25], 1)[0]
    return float(-60.0 / slope)
