"""How fast the train step runs: FLOPs per step, the chip's peak, MFU.

MFU (model FLOPs utilisation) = FLOPs of one step / step time / (peak FLOP/s
of one chip x number of chips). The FLOPs come from XLA's cost analysis of
the step the run compiles (:func:`program_flops`); the peak from :data:`PEAKS`,
looked up by ``jax.devices()[0].device_kind``. A chip that is not in the
table (a CPU, a GPU nobody entered) has no peak and the run logs no MFU
rather than a wrong one.

What the FLOP count is: ``cost_analysis()["flops"]`` of the *lowered* step
(``jitted.lower(...)``: the whole batch's program, before XLA partitions it
over the devices), i.e. the model's FLOPs for the global batch. The
*compiled* program's count is one device's share and includes work every
device repeats (the replicated optimizer update, the loss over gathered
embeddings): on 8 CPU devices the tiny test model's step counts 69.4 MFLOP
lowered and 8 x 11.1 = 89.2 MFLOP compiled. That figure is the fallback
where a backend can't analyse the lowered program. Loops (the blocked loss's
``lax.map``) are counted once per body by some XLA versions: for the
ResNets that is < 0.1 % of the step.

Which peak: bf16 dense (no sparsity) when the run computes in bf16
(``config.mixed_precision``); otherwise the peak of what float32 matmuls and
convolutions run as at JAX's default precision: bf16 passes on a TPU's MXU
(so the bf16 peak), TF32 on NVIDIA Ampere and later. With
``jax_default_matmul_precision=highest`` float32 runs as true float32, far
below that peak, and the MFU logged is measured against the faster path.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax


@dataclasses.dataclass(frozen=True)
class Peak:
  """One chip's dense peak FLOP/s, and where the figures come from."""
  bf16: float
  float32: float   # what float32 matmuls run as at JAX's default precision
  source: str


# Cloud TPU pages give bf16 per chip; f32 matmuls at DEFAULT precision are
# single bf16 passes on the MXU, so their peak is the same. NVIDIA's
# datasheets give "with sparsity" figures: dense is half.
_TPU_V4 = Peak(275e12, 275e12, "https://cloud.google.com/tpu/docs/v4 (275 TFLOP/s bf16 per chip)")
_TPU_V5E = Peak(197e12, 197e12, "https://cloud.google.com/tpu/docs/v5e (197 TFLOP/s bf16 per chip)")
_TPU_V5P = Peak(459e12, 459e12, "https://cloud.google.com/tpu/docs/v5p (459 TFLOP/s bf16 per chip)")
_TPU_V6E = Peak(918e12, 918e12,
                "https://cloud.google.com/tpu/docs/v6e (918 TFLOP/s bf16 per chip)")
_A100 = Peak(312e12, 156e12,
             "NVIDIA A100 Tensor Core GPU datasheet, https://www.nvidia.com/en-us/data-center/a100/ "
             "(BF16 312 TFLOP/s, TF32 156 TFLOP/s dense)")
_H100_SXM = Peak(989e12, 494.5e12,
                 "NVIDIA H100 datasheet, https://www.nvidia.com/en-us/data-center/h100/ "
                 "(H100 SXM: BF16 1,979 and TF32 989 TFLOP/s with sparsity; dense is half)")
_H100_PCIE = Peak(756e12, 378e12,
                  "NVIDIA H100 datasheet, https://www.nvidia.com/en-us/data-center/h100/ "
                  "(H100 PCIe: BF16 1,513 and TF32 756 TFLOP/s with sparsity; dense is half)")
_H200 = Peak(989e12, 494.5e12,
             "NVIDIA H200 datasheet, https://www.nvidia.com/en-us/data-center/h200/ "
             "(BF16 1,979 and TF32 989 TFLOP/s with sparsity; dense is half)")

# TPU device kinds, exactly as jax reports them ("TPU v4 lite", the v4i, is
# another chip and is not here).
_TPU_KINDS = {
    "TPU v4": _TPU_V4,
    "TPU v5 lite": _TPU_V5E, "TPU v5e": _TPU_V5E,
    "TPU v5": _TPU_V5P, "TPU v5p": _TPU_V5P,
    "TPU v6 lite": _TPU_V6E, "TPU v6e": _TPU_V6E,
}
# GPU device kinds carry the memory and form factor ("NVIDIA A100-SXM4-80GB",
# "NVIDIA H100 80GB HBM3", "NVIDIA H100 PCIe"): matched by these substrings,
# first match wins.
_GPU_SUBSTRINGS = (
    ("A100", _A100),
    ("H100 PCIe", _H100_PCIE),
    ("H100", _H100_SXM),
    ("H200", _H200),
)
PEAKS: Mapping[str, Peak] = {**_TPU_KINDS, **{s: p for s, p in _GPU_SUBSTRINGS}}


def device_kind() -> str:
  """The first device's kind (``"TPU v4"``, ``"NVIDIA H100 80GB HBM3"``, ``"cpu"``)."""
  return jax.devices()[0].device_kind


def peak_for(kind: str) -> Peak | None:
  """The table's entry for a device kind; None for a chip not in the table."""
  if kind in _TPU_KINDS:
    return _TPU_KINDS[kind]
  for substring, peak in _GPU_SUBSTRINGS:
    if substring in kind:
      return peak
  return None


def peak_flops(kind: str, *, bf16: bool) -> float | None:
  """One chip's dense peak FLOP/s for the run's compute dtype; None if unknown."""
  peak = peak_for(kind)
  if peak is None:
    return None
  return peak.bf16 if bf16 else peak.float32


def program_flops(stage: Any) -> float | None:
  """``cost_analysis()["flops"]`` of a ``jax.stages.Lowered`` (the global
  program) or ``Compiled`` (one device's share); None where the backend
  gives no count."""
  try:
    analysis = stage.cost_analysis()
  except Exception:  # some backends/plugins don't implement it
    return None
  if isinstance(analysis, (list, tuple)):  # older jax: one dict per module
    analysis = analysis[0] if analysis else None
  if not analysis or "flops" not in analysis:
    return None
  flops = float(analysis["flops"])
  return flops if flops > 0 else None


def mfu(*, flops_per_step: float, step_time_s: float, peak_per_chip: float,
        num_chips: int) -> float:
  """Model FLOPs utilisation: achieved FLOP/s over the chips' summed peak."""
  return flops_per_step / step_time_s / (peak_per_chip * num_chips)


@dataclasses.dataclass(frozen=True)
class StepCost:
  """What the logger needs to turn a step time into MFU."""
  flops_per_step: float | None   # global: one device's share x num_devices
  peak_per_chip: float | None
  num_devices: int
  device_kind: str

  def mfu(self, step_time_s: float) -> float | None:
    if not self.flops_per_step or not self.peak_per_chip or step_time_s <= 0:
      return None
    return mfu(flops_per_step=self.flops_per_step, step_time_s=step_time_s,
               peak_per_chip=self.peak_per_chip, num_chips=self.num_devices)

  def describe(self) -> str:
    """``1.91 TFLOP per step; peak 275 TFLOP/s per chip (TPU v4) x 4``, or why no MFU."""
    flops = ("FLOPs per step unknown" if self.flops_per_step is None
             else f"{_with_prefix(self.flops_per_step)}FLOP per step")
    if self.peak_per_chip is None:
      return f"{flops}; no MFU: {self.device_kind!r} is not in hcl_jax.train.throughput.PEAKS"
    return (f"{flops}; peak {self.peak_per_chip / 1e12:.4g} TFLOP/s per chip "
            f"({self.device_kind}) x {self.num_devices}")


def _with_prefix(value: float) -> str:
  """``"148 M"``, ``"2 T"``: 3 significant digits and an SI prefix."""
  for factor, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
    if value >= factor:
      return f"{value / factor:.3g} {prefix}"
  return f"{value:.3g} "


def step_cost(*, lowered: Any, compiled: Any, num_devices: int, bf16: bool,
              kind: str | None = None) -> StepCost:
  """The train step's :class:`StepCost`: the lowered program's FLOPs (else
  the compiled program's x ``num_devices``) and the chip's peak."""
  kind = device_kind() if kind is None else kind
  flops = program_flops(lowered)
  if flops is None:
    per_device = program_flops(compiled)
    flops = None if per_device is None else per_device * num_devices
  return StepCost(flops_per_step=flops, peak_per_chip=peak_flops(kind, bf16=bf16),
                  num_devices=num_devices, device_kind=kind)
