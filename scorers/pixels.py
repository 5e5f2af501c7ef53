"""Image transforms of the pixel scorers (SigLIP, BLIP), done on the device.

Both models resize the whole image to a square, S x S (no crop, the aspect ratio is not kept),
with a bicubic filter, then scale to [0, 1] and normalise per channel: SigLIP with mean = std =
0.5 (to [-1, 1]), BLIP with CLIP's mean and std. `resize_square` resamples the way PIL does for
the Hugging Face PIL image processors: the width first, then the height, each pass bicubic
(a = -0.5), antialiased when shrinking, and rounded and clipped to uint8 levels, with
`jax.image.scale_and_translate` (jittable). scorers/clip_model.py resizes the same way before
its centre crop.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
HALF = (0.5, 0.5, 0.5)  # SigLIP's IMAGENET_STANDARD_MEAN and _STD.


def resize_axis(x: jax.Array, axis: int, size: int) -> jax.Array:
  """Bicubic (a = -0.5) resize of one axis, antialiased when shrinking, rounded to uint8 levels."""
  scale = size / x.shape[axis]
  shape = x.shape[:axis] + (size,) + x.shape[axis + 1:]
  x = jax.image.scale_and_translate(x, shape, (axis,), jnp.array([scale]), jnp.array([0.0]),
                                    "cubic", antialias=True,
                                    precision=jax.lax.Precision.HIGHEST)
  return jnp.clip(jnp.round(x), 0.0, 255.0)


def resize_square(pixels: jax.Array, size: int) -> jax.Array:
  """[N, H, W, 3] uint8 (or float in uint8 levels) -> [N, size, size, 3] float32 uint8 levels."""
  x = pixels.astype(jnp.float32)
  if x.shape[2] != size:
    x = resize_axis(x, 2, size)
  if x.shape[1] != size:
    x = resize_axis(x, 1, size)
  return x


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def square_transform(pixels: jax.Array, size: int, mean: tuple[float, ...],
                     std: tuple[float, ...]) -> jax.Array:
  """[N, H, W, 3] uint8 RGB -> [N, size, size, 3] float32: resized, /255, (x - mean) / std."""
  x = resize_square(pixels, size) / 255.0
  return (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)
