"""Placing trees on the local devices the way `jax.pmap` takes them (a leading device axis)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def pmap_devices() -> list:
  """The `devices=` of every pmapped step: all devices of all processes, in the same order on
  each process, as `jax.pmap` requires with several processes. Given only the local devices, a
  pmap's psum reduces over those alone: every process would train its own model.
  """
  return jax.devices()


# The axis name of the pmapped training steps (`training.AXIS`). pmap's outputs are laid out
# over a mesh with this axis name, so placing states and batches on the same layout means the
# step's own output state is an input it has seen: it compiles once, not again at step 2.
PMAP_AXIS = "batch"


def device_sharding(devices: list, axis_name: str = PMAP_AXIS) -> jax.sharding.NamedSharding:
  """Splits axis 0 over `devices`: the layout pmap takes its inputs in (and gives its outputs)."""
  mesh = jax.sharding.Mesh(np.asarray(devices), (axis_name,))
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(axis_name))


def replicate(tree: Any, devices: list | None = None) -> Any:
  """Puts one copy of `tree` on every local device (leading device axis)."""
  devices = devices or jax.local_devices()
  sharding = device_sharding(devices)
  return jax.tree_util.tree_map(
      lambda x: jax.device_put(jnp.broadcast_to(x, (len(devices),) + jnp.shape(x)), sharding), tree)


def unreplicate(tree: Any) -> Any:
  """The first local device's copy of a replicated tree, fetched to the host (numpy).

  Reads that device's buffer as it is (`addressable_shards`) instead of indexing the array:
  `x[0]` is a small computation over every local device, and with several processes a
  computation launched in a different order on each process can wait forever on the
  collectives of another (seen as a hang between a pmapped step and orbax's save).
  """
  def first(x):
    if isinstance(x, jax.Array):
      return np.asarray(x.addressable_shards[0].data)[0, ...]
    return np.asarray(x)[0, ...]
  return jax.tree_util.tree_map(first, tree)


def shard(batch: Any, num_devices: int) -> Any:
  """Every leaf [B, ...] -> [num_devices, B / num_devices, ...]; B must divide evenly."""
  def split(x):
    if x.shape[0] % num_devices:
      raise ValueError(f"A batch of {x.shape[0]} does not split over {num_devices} devices; "
                       "choose images_per_batch divisible by the number of devices.")
    return x.reshape((num_devices, x.shape[0] // num_devices) + x.shape[1:])
  return jax.tree_util.tree_map(split, batch)


def device_keys(rng: jax.Array, step: int, num_devices: int, process_index: int = 0,
                process_count: int = 1) -> jax.Array:
  """This process's per-device keys of one step: fold_in(step), split over all devices.

  With several processes of `num_devices` local devices each, the step key is split over every
  device of every process and each process takes its own slice, so the run's device d gets the
  same key however the devices are spread over processes.
  """
  keys = jax.random.split(jax.random.fold_in(rng, step), num_devices * process_count)
  return keys[process_index * num_devices:(process_index + 1) * num_devices]
