"""torchvision's outputs for tests/test_torchvision_parity.py, in a subprocess.

``python tests/torchvision_reference.py OUT.npz`` writes every reference array.
It runs on its own because importing torchvision after TensorFlow crashes the
process (torch 2.14.1 / torchvision 0.29.1 with tensorflow-cpu 2.21: a
segmentation fault in torchvision.ops); this file imports no TensorFlow.
The inputs (``images``, ``BOXES``, factors) are defined here and imported by
the test, so both sides see the same ones.
"""

import sys

import numpy as np

N_DRAWS = 3000
FACTORS = (0.6, 0.9, 1.3)
HUES = (-0.1, -0.03, 0.05, 0.1)
CROP_SHAPES = ((32, 32), (96, 96), (40, 6))
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)


def images() -> list[np.ndarray]:
  """4 random 32x32 uint8 images and one smooth 96x96 one."""
  rng = np.random.default_rng(0)
  out = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(4)]
  y, x = np.mgrid[0:96, 0:96]
  out.append(np.stack([128 + 100 * np.sin(x / 7), 128 + 100 * np.cos(y / 5),
                       128 + 90 * np.sin((x + y) / 9)], -1).astype(np.uint8))
  return out


def boxes(image: np.ndarray) -> list[tuple[int, int, int, int]]:
  h, w = image.shape[:2]
  return [(0, 0, h, w), (2, 3, h // 2, w // 3 + 1), (5, 1, h - 7, w - 2), (1, 1, 4, 5)]


def main(path: str) -> None:
  import torch
  import torchvision.transforms as transforms
  import torchvision.transforms.functional as F
  from PIL import Image

  out = {}
  tensor = lambda im: torch.from_numpy(im.astype(np.float32) / 255.0).permute(2, 0, 1)
  hwc = lambda t: t.permute(1, 2, 0).numpy()
  for i, im in enumerate(images()):
    pil, t = Image.fromarray(im), tensor(im)
    for j, (top, left, h, w) in enumerate(boxes(im)):
      out[f"crop/t/{i}/{j}"] = hwc(F.resized_crop(t, top, left, h, w, [32, 32], antialias=True))
      out[f"crop/p/{i}/{j}"] = np.asarray(F.resized_crop(pil, top, left, h, w, [32, 32]))
    out[f"resize96/t/{i}"] = hwc(F.resize(t, [32, 32], antialias=True))
    out[f"flip/t/{i}"], out[f"flip/p/{i}"] = hwc(F.hflip(t)), np.asarray(F.hflip(pil))
    for k, f in enumerate(FACTORS):
      for name, fn in (("brightness", F.adjust_brightness), ("contrast", F.adjust_contrast),
                       ("saturation", F.adjust_saturation)):
        out[f"{name}/t/{i}/{k}"], out[f"{name}/p/{i}/{k}"] = hwc(fn(t, f)), np.asarray(fn(pil, f))
    for k, shift in enumerate(HUES):
      out[f"hue/t/{i}/{k}"] = hwc(F.adjust_hue(t, shift))
      out[f"hue/p/{i}/{k}"] = np.asarray(F.adjust_hue(pil, shift))
    out[f"gray/t/{i}"] = hwc(F.rgb_to_grayscale(t, 3))
    out[f"gray/p/{i}"] = np.asarray(F.rgb_to_grayscale(pil, 3))
    out[f"normalize/t/{i}"] = hwc(F.normalize(t, MEAN, STD))
  torch.manual_seed(0)
  for h, w in CROP_SHAPES:
    dummy = torch.zeros(1, h, w)
    out[f"boxes/{h}x{w}"] = np.array([transforms.RandomResizedCrop.get_params(
        dummy, [0.08, 1.0], [3 / 4, 4 / 3]) for _ in range(N_DRAWS)])
  jitter = transforms.ColorJitter(0.4, 0.4, 0.4, 0.1)
  params = [jitter.get_params(jitter.brightness, jitter.contrast, jitter.saturation, jitter.hue)
            for _ in range(N_DRAWS)]
  out["jitter/order"] = np.array([p[0].numpy() for p in params])
  out["jitter/factors"] = np.array([[float(v) for v in p[1:]] for p in params])
  np.savez(path, **out)


if __name__ == "__main__":
  main(sys.argv[1])
