"""Reading the original checkpoint files into flat `{key: numpy array}` state dicts.

One reader per format, each with errors that name the file and say what is wrong:
  * `load_torch_file`: `.pt`/`.bin`/`.pth`/`.pkl` written by `torch.save`, read with
    `weights_only=True` (no code runs) unless the user trusts the file;
  * `read_safetensors`: one `.safetensors` file;
  * `read_hf_directory`: a Hugging Face model directory (config.json and single or sharded
    safetensors / pytorch_model.bin), the one reader CLIP and LXMERT (and later scorers) share;
  * `read_json`: a config file.
torch is imported only inside these functions.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

HF_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                   "pytorch_model.bin.index.json")
# torch's safe unpickler names what it refused, e.g. "Unsupported global: GLOBAL foo.Bar".
_REFUSED_GLOBAL = re.compile(r"(?:Unsupported global|GLOBAL)[: ]+(?:GLOBAL )?([\w.]+)")


class CheckpointFileError(ValueError):
  """A checkpoint file cannot be read: missing, a directory, empty, truncated, wrong format."""


def check_file(path: str, what: str) -> None:
  """Raises `CheckpointFileError` unless `path` is a non-empty regular file."""
  if not os.path.exists(path):
    raise CheckpointFileError(f"{what} {path} not found; check the path.")
  if os.path.isdir(path):
    raise CheckpointFileError(f"{what} {path} is a directory; expected a file.")
  if os.path.getsize(path) == 0:
    raise CheckpointFileError(f"{what} {path} is empty (0 bytes); the copy or download did not "
                              "finish. Copy the file again.")


def read_json(path: str, what: str = "config file") -> dict[str, Any]:
  """A JSON object from `path`; errors name the file and the position."""
  check_file(path, what)
  with open(path, encoding="utf-8") as f:
    try:
      payload = json.load(f)
    except json.JSONDecodeError as error:
      raise CheckpointFileError(f"{what} {path} is not valid JSON: {error.msg} at line "
                                f"{error.lineno}, column {error.colno}.") from error
  if not isinstance(payload, dict):
    raise CheckpointFileError(f"{what} {path}: expected a JSON object; found "
                              f"{type(payload).__name__}.")
  return payload


def load_torch_file(path: str, *, trust_pickle: bool = False) -> Any:
  """What `torch.save` wrote to `path`, read with `weights_only=True` unless `trust_pickle`.

  Raises:
    CheckpointFileError: the file is missing, a directory, empty, truncated or not a torch
      file; or it holds Python objects the safe loader refused (the message names the global
      and how to allow it: only for files whose source you trust).
  """
  check_file(path, "checkpoint")
  import pickle  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel (only conversion needs torch)

  try:
    return torch.load(path, map_location="cpu", weights_only=not trust_pickle)
  except pickle.UnpicklingError as error:
    refused = _REFUSED_GLOBAL.search(str(error))
    if trust_pickle or refused is None:
      raise CheckpointFileError(f"checkpoint {path} is not a readable torch file ({error}).") from error
    raise CheckpointFileError(
        f"checkpoint {path} holds a Python object of type {refused.group(1)}, which the safe "
        "loader (torch.load weights_only=True) refuses because unpickling it runs code. If you "
        "trust the file's source, allow it with --config.trust_pickle=True.") from error
  except Exception as error:  # pylint: disable=broad-except (EOFError, RuntimeError, KeyError..)
    raise CheckpointFileError(
        f"checkpoint {path} ({os.path.getsize(path):,} bytes) is truncated or not a file "
        f"written by torch.save: {str(error).splitlines()[0]}") from error


def state_dict_to_numpy(state_dict: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """Torch tensors (any dtype) -> float32/int numpy arrays, keys unchanged; values that are
  not tensors (an epoch counter, optimizer state) are kept as they are."""
  out = {}
  for key, value in state_dict.items():
    if hasattr(value, "detach"):
      value = (value.detach().float().cpu().numpy() if value.is_floating_point()
               else value.cpu().numpy())
    out[key] = value
  return out


def read_safetensors(path: str) -> dict[str, np.ndarray]:
  """The tensors of one `.safetensors` file as numpy (bfloat16 through torch, as float32)."""
  check_file(path, "weights file")
  from safetensors import SafetensorError  # pylint: disable=import-outside-toplevel
  from safetensors import numpy as st_numpy  # pylint: disable=import-outside-toplevel

  try:
    try:
      return st_numpy.load_file(path)
    except (TypeError, ValueError):  # bfloat16 has no numpy dtype: read through torch.
      from safetensors import torch as st_torch  # pylint: disable=import-outside-toplevel
      return state_dict_to_numpy(st_torch.load_file(path))
  except SafetensorError as error:
    raise CheckpointFileError(f"weights file {path} is not a valid safetensors file (truncated "
                              f"or damaged?): {error}") from error


def read_weights_file(path: str, *, trust_pickle: bool = False) -> dict[str, np.ndarray]:
  """A flat state dict from a `.safetensors` file or a torch file holding a state dict."""
  if path.endswith(".safetensors"):
    return read_safetensors(path)
  state = load_torch_file(path, trust_pickle=trust_pickle)
  if not isinstance(state, Mapping):
    raise CheckpointFileError(f"checkpoint {path} holds a {type(state).__name__}; expected a state "
                              "dict (name -> tensor) as written by torch.save(model.state_dict()).")
  return state_dict_to_numpy(state)


def read_hf_directory(directory: str, *, trust_pickle: bool = False
                      ) -> tuple[dict[str, Any], dict[str, np.ndarray], str]:
  """A Hugging Face model directory -> (config.json as a dict, flat state dict, weights path).

  Reads `model.safetensors`, sharded safetensors (`model.safetensors.index.json`),
  `pytorch_model.bin` or sharded `.bin` files, in that order of preference.

  Raises:
    CheckpointFileError: no directory, no config.json, no weight file, or a damaged file.
  """
  if not os.path.isdir(directory):
    raise CheckpointFileError(f"{directory} is not a directory; expected a Hugging Face model "
                              "directory with config.json and model.safetensors.")
  config = read_json(os.path.join(directory, "config.json"))
  found = [name for name in HF_WEIGHT_FILES if os.path.exists(os.path.join(directory, name))]
  if not found:
    raise CheckpointFileError(
        f"no weights in {directory}: expected one of {', '.join(HF_WEIGHT_FILES)}; the directory "
        f"holds {sorted(os.listdir(directory))}. Copy the model's weight file(s) there.")
  source = os.path.join(directory, found[0])
  files = [source]
  if source.endswith(".index.json"):
    weight_map = read_json(source, "weights index").get("weight_map")
    if not isinstance(weight_map, dict):
      raise CheckpointFileError(f"weights index {source} has no 'weight_map' object.")
    files = [os.path.join(directory, name) for name in sorted(set(weight_map.values()))]
  state: dict[str, np.ndarray] = {}
  for file in files:
    state.update(read_weights_file(file, trust_pickle=trust_pickle))
  return config, state, source
