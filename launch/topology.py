"""Cloud TPU accelerator types: ``v4-32`` -> chips, hosts (VMs), devices.

From Google's Cloud TPU pages "TPU v2" ... "TPU v6e". Standard library only.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Callable


def _cube_slices(max_cores: int) -> Callable[[int], bool]:
  # v4, v5p: 2x2x1, 2x2x2, 2x2x4, 2x4x4 chips below one 4x4x4 cube, then
  # whole cubes (each dimension a multiple of 4): multiples of 128 cores.
  return lambda n: n in (8, 16, 32, 64) or (0 < n <= max_cores and n % 128 == 0)


@dataclasses.dataclass(frozen=True)
class _Generation:
  cores_per_chip: int         # the N of "vX-N" counts TensorCores on v2-v5p
  devices_per_chip: int       # JAX devices (v4/v5p: one megacore per chip)
  chips_per_host: int         # hosts (workers) of a multi-host slice
  single_host_max_chips: int  # slices up to this many chips are one host
  sizes: Callable[[int], bool]
  sizes_text: str
  runtime_version: str        # default TPU VM software version


_LITE_SIZES = (1, 4, 8, 16, 32, 64, 128, 256)
_V2_SIZES = (8, 32, 128, 256, 512)
_V3_SIZES = (8, 32, 64, 128, 256, 512, 1024, 2048)

_GENERATIONS: dict[str, _Generation] = {
    "v2": _Generation(2, 2, 4, 4, lambda n: n in _V2_SIZES,
                      ", ".join(map(str, _V2_SIZES)), "tpu-ubuntu2204-base"),
    "v3": _Generation(2, 2, 4, 4, lambda n: n in _V3_SIZES,
                      ", ".join(map(str, _V3_SIZES)), "tpu-ubuntu2204-base"),
    "v4": _Generation(2, 1, 4, 4, _cube_slices(8192),
                      "8, 16, 32, 64, then multiples of 128 up to 8192",
                      "tpu-ubuntu2204-base"),
    "v5p": _Generation(2, 1, 4, 4, _cube_slices(12288),
                       "8, 16, 32, 64, then multiples of 128 up to 12288",
                       "v2-alpha-tpuv5"),
    # v5e and v6e name slices by chips; up to 8 chips sit on one host,
    # larger slices are made of 4-chip hosts.
    "v5litepod": _Generation(1, 1, 4, 8, lambda n: n in _LITE_SIZES,
                             ", ".join(map(str, _LITE_SIZES)),
                             "v2-alpha-tpuv5-lite"),
    "v6e": _Generation(1, 1, 4, 8, lambda n: n in _LITE_SIZES,
                       ", ".join(map(str, _LITE_SIZES)), "v2-alpha-tpuv6e"),
}


@dataclasses.dataclass(frozen=True)
class Accelerator:
  """A parsed accelerator type such as ``v4-32``."""
  type: str
  generation: str
  chips: int
  hosts: int
  chips_per_host: int
  devices: int                # jax.device_count() on the slice
  default_runtime_version: str

  def describe(self) -> str:
    workers = "worker 0" if self.hosts == 1 else f"workers 0-{self.hosts - 1}"
    return (f"{self.type} = {self.chips} chip{'s' * (self.chips > 1)} on "
            f"{self.hosts} host{'s' * (self.hosts > 1)} ({workers}, "
            f"{self.chips_per_host} chips per host)")


def parse_accelerator_type(accelerator_type: str) -> Accelerator:
  """``v4-32`` -> Accelerator(chips=16, hosts=4, ...); ValueError if invalid."""
  allowed = ", ".join(f"{g}-N" for g in _GENERATIONS)
  match = re.fullmatch(r"([a-z0-9]+)-([0-9]+)", accelerator_type or "")
  if match is None or match.group(1) not in _GENERATIONS:
    raise ValueError(
        f"accelerator type {accelerator_type!r} is not one of {allowed} "
        "(e.g. v4-8, v4-32, v5litepod-16, v5p-8, v6e-8).")
  name, size = match.group(1), int(match.group(2))
  gen = _GENERATIONS[name]
  if not gen.sizes(size):
    raise ValueError(
        f"accelerator type {accelerator_type!r}: {name} sizes are "
        f"{gen.sizes_text}.")
  chips = size // gen.cores_per_chip
  if chips <= gen.single_host_max_chips:
    hosts, per_host = 1, chips
  else:
    hosts, per_host = chips // gen.chips_per_host, gen.chips_per_host
  return Accelerator(accelerator_type, name, chips, hosts, per_host,
                     chips * gen.devices_per_chip, gen.runtime_version)
