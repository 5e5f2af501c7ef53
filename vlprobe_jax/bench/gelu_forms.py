"""Time and accuracy of GELU formulations on the current backend (BENCHMARKS.md, issue 18).

  python -m vlprobe_jax.bench.gelu_forms            # 4096 x 3072 activations, float32 and bf16

The forms are called interleaved (so a change of load hits every form alike); per form the
minimum and the median of 21 calls, in wall time and in process CPU time, and the largest error
against float64 erfc. `scorers.layers.erf_gelu` is the scorers' exact GELU.
"""

import time

import jax
import jax.numpy as jnp
import numpy as np
import scipy.special

from scorers import layers

FORMS = {
    "jax.nn.gelu exact (erfc)": lambda x: jax.nn.gelu(x, approximate=False),
    "erf form, f32 math (layers.erf_gelu)": layers.erf_gelu,
    "tanh form (approximate=True)": lambda x: jax.nn.gelu(x, approximate=True),
}


def main(shape=(4096, 3072), calls: int = 21) -> None:
  x64 = np.random.default_rng(0).normal(0, 2.0, size=shape)
  print(jax.__version__, jax.devices(), "x:", shape)
  for dtype in (jnp.float32, jnp.bfloat16):
    x = jnp.asarray(x64, dtype)
    exact = np.asarray(x.astype(jnp.float32), np.float64)
    exact = 0.5 * exact * scipy.special.erfc(-exact / np.sqrt(2))
    fns = {name: jax.jit(lambda x, fn=fn: fn(x) * 1.0) for name, fn in FORMS.items()}
    wall = {name: [] for name in FORMS}
    cpu = {name: [] for name in FORMS}
    err = {name: float(np.abs(np.asarray(f(x).astype(jnp.float32), np.float64) - exact).max())
           for name, f in fns.items()}
    for _ in range(calls):
      for name, f in fns.items():
        t, c = time.perf_counter(), time.process_time()
        f(x).block_until_ready()
        wall[name].append(time.perf_counter() - t)
        cpu[name].append(time.process_time() - c)
    for name in FORMS:
      print(f"{jnp.dtype(dtype).name:9s} {name:38s} wall min {1e3 * min(wall[name]):6.1f} "
            f"median {1e3 * np.median(wall[name]):6.1f} ms | CPU min {1e3 * min(cpu[name]):6.1f} "
            f"median {1e3 * np.median(cpu[name]):6.1f} ms | max|err| {err[name]:.1e}")


if __name__ == "__main__":
  main()
