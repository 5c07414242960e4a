"""Counter-based random numbers: the draw for (seed, stream, device, counter) is a pure
function of those four integers (splitmix64 hashing, Box-Muller), so a device's noise does
not depend on which other devices were drawn, in what order, or by which backend. Two
simulations that apply the same events to the same devices see the same noise."""

from __future__ import annotations

import math

import torch

_MASK64 = (1 << 64) - 1


def _signed(x: int) -> int:
    x &= _MASK64
    return x - (1 << 64) if x >= 1 << 63 else x


_GOLDEN = _signed(0x9E3779B97F4A7C15)
_MIX1 = _signed(0xBF58476D1CE4E5B9)
_MIX2 = _signed(0x94D049BB133111EB)
_K_STREAM = _signed(0xD1B54A32D192ED03)
_K_DEVICE = _signed(0xABC98388FB8FAC03)
_K_COUNT = _signed(0x8CB92BA72F3D8DD7)

# streams: one per kind of random event
C2C, DRIFT = 1, 2


def _shr(x: torch.Tensor, k: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's >> is arithmetic)."""
    return (x >> k) & ((1 << (64 - k)) - 1)


def _splitmix(x: torch.Tensor) -> torch.Tensor:
    z = x + _GOLDEN
    z = (z ^ _shr(z, 30)) * _MIX1
    z = (z ^ _shr(z, 27)) * _MIX2
    return z ^ _shr(z, 31)


def keyed_normal(seed: int, stream: int | torch.Tensor, device: torch.Tensor, counter: torch.Tensor,
                 dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Standard normal draws, one per (device, counter) pair (int64 tensors, broadcast
    together), of one stream or of a stream per draw (an int64 tensor broadcast with them:
    several kinds of draw in one call). One 64-bit hash per draw; its two 32-bit halves are
    the Box-Muller uniforms."""
    if isinstance(stream, torch.Tensor):
        key = stream * _K_STREAM + _signed(seed)   # int64 arithmetic wraps as _signed does
    else:
        key = _signed(seed + stream * _K_STREAM)
    h = _splitmix((device * _K_DEVICE) ^ (counter * _K_COUNT) ^ key)
    u1 = ((h & 0xFFFFFFFF).to(torch.float64) + 1.0) * (1.0 / 4294967296.0)   # (0, 1]
    u2 = _shr(h, 32).to(torch.float64) * (1.0 / 4294967296.0)
    return (torch.sqrt(-2.0 * torch.log(u1)) * torch.cos((2 * math.pi) * u2)).to(dtype)
