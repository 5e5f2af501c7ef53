"""Full-size checkpoints in every released format, with random weights, for the rehearsal.

  lxmert_hf     `transformers.LxmertForPreTraining` at its default (base) config, `save_pretrained`
                (the `unc-nlp/lxmert-base-uncased` layout: config.json + model.safetensors)
  lxmert_lxrt   the same weights as airsplay/lxmert's `model_LXRT.pth`: `torch.save` of the
                state dict with `bert.*` keys behind DataParallel's `module.` prefix
  clip_hf       `transformers.CLIPModel` at its default config (ViT-B/32: text 512 x 12, vision
                768 x 12, patch 32, 224 px), `save_pretrained`
  uniter        `uniter-base.pt`: `torch.save(state_dict)`, every key and shape of
                `tests/assets/uniter_base_keys.json`, its two tied pairs sharing storage
  rosita        `rosita-base.pkl`: `torch.save({module: state_dict, ..., "epoch": 20})`, the
                pretraining net of `rosita_base_keys.json` (MLM decoder tied to the embeddings)
  vilbert       `vilbert-base.bin` (the multi-task repo's pretrained model): `torch.save(state_dict)`
                of `vilbert_base_keys.json`, the MLM decoder tied to the word embeddings

The key-list checkpoints are initialised BERT-style (N(0, 0.02) matrices, LayerNorm 1 / 0,
biases 0). torch and transformers are imported only here and only to write files, compare
with `transformers`, or read through a scorer's own `load` (which imports torch for `.pt`).

Command line (the rehearsal runs each load in its own process to measure its memory):
  python -m vlprobe_jax.bench.rehearsal_checkpoints write --format lxmert_hf --out DIR [--size tiny]
  python -m vlprobe_jax.bench.rehearsal_checkpoints load --scorer lxmert --path DIR
  python -m vlprobe_jax.bench.rehearsal_checkpoints parity --scorer lxmert --path DIR
Each prints one JSON line (prefix `RESULT `) with what it measured.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

import numpy as np

FORMATS = {  # format -> (scorer, file name inside the checkpoint folder or "" for a directory)
    "lxmert_hf": ("lxmert", ""),
    "lxmert_lxrt": ("lxmert", "model_LXRT.pth"),
    "clip_hf": ("clip", ""),
    "uniter": ("uniter", "uniter-base.pt"),
    "rosita": ("rosita", "rosita-base.pkl"),
    "vilbert": ("vilbert", "vilbert-base.bin"),
}
GOLDEN_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.dirname(os.path.abspath(__file__))))), "shared", "golden")
# Sizes of the tiny checkpoints (CI smoke tests only; the record is the default sizes).
# The tiny LXMERT's initializer_range is 0.2, not 0.02, so its scores differ between captions
# (SCST on it has advantages to learn from).
_TINY_LXMERT = dict(hidden_size=32, num_attention_heads=4, intermediate_size=48, l_layers=1,
                    r_layers=1, x_layers=1, num_qa_labels=3, num_object_labels=5,
                    num_attr_labels=4, initializer_range=0.2)
_TINY_CLIP = dict(text_config=dict(hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                                   num_attention_heads=4),
                  vision_config=dict(hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                                     num_attention_heads=4, image_size=32, patch_size=8),
                  projection_dim=16)
RESULT_PREFIX = "RESULT "


def checkpoint_path(root: str, fmt: str) -> str:
  """Where `fmt` is written under `root` (a directory for the Hugging Face formats)."""
  scorer, file_name = FORMATS[fmt]
  del scorer
  return os.path.join(root, fmt, file_name) if file_name else os.path.join(root, fmt)


def _lxmert_model(size: str, seed: int):
  import torch  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel
  torch.manual_seed(seed)
  config = transformers.LxmertConfig(**(_TINY_LXMERT if size == "tiny" else {}))
  return transformers.LxmertForPreTraining(config).eval()


def write_lxmert(root: str, size: str = "base", seed: int = 0,
                 formats=("lxmert_hf", "lxmert_lxrt")) -> dict[str, dict]:
  """The HF directory and the airsplay `.pth` of one random LXMERT (same weights in both)."""
  import torch  # pylint: disable=import-outside-toplevel
  start = time.perf_counter()
  model = _lxmert_model(size, seed)
  made = {"init_seconds": time.perf_counter() - start}
  out = {}
  if "lxmert_hf" in formats:
    start = time.perf_counter()
    model.save_pretrained(checkpoint_path(root, "lxmert_hf"))
    out["lxmert_hf"] = dict(made, write_seconds=time.perf_counter() - start)
  if "lxmert_lxrt" in formats:
    start = time.perf_counter()
    state = {"module." + ("bert." + k[len("lxmert."):] if k.startswith("lxmert.") else k): v
             for k, v in model.state_dict().items()}
    path = checkpoint_path(root, "lxmert_lxrt")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save(state, path + ".tmp")
    os.replace(path + ".tmp", path)
    out["lxmert_lxrt"] = dict(made, write_seconds=time.perf_counter() - start)
  return out


def write_clip(root: str, size: str = "base", seed: int = 0) -> dict[str, dict]:
  import torch  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel
  start = time.perf_counter()
  torch.manual_seed(seed)
  model = transformers.CLIPModel(transformers.CLIPConfig(**(_TINY_CLIP if size == "tiny" else {})))
  init = time.perf_counter() - start
  start = time.perf_counter()
  model.eval().save_pretrained(checkpoint_path(root, "clip_hf"))
  return {"clip_hf": {"init_seconds": init, "write_seconds": time.perf_counter() - start}}


def _random_tensor(key: str, shape: list[int], generator) -> Any:
  """BERT-style init by name and rank: LayerNorm weights 1, biases 0, the rest N(0, 0.02)."""
  import torch  # pylint: disable=import-outside-toplevel
  leaf = key.rsplit(".", 1)[-1]
  if leaf in ("bias", "beta"):
    return torch.zeros(shape)
  if len(shape) == 1 and leaf in ("weight", "gamma"):
    return torch.ones(shape)
  return torch.randn(shape, generator=generator) * 0.02


def _state_from_keys(keys: list, tied: list, generator) -> dict:
  """An ordered state dict with every [key, shape, dtype]; tied keys share one tensor."""
  import torch  # pylint: disable=import-outside-toplevel
  tied_to = {a: b for a, b in tied}
  state = {}
  for key, shape, dtype in keys:
    if dtype != "float32":
      raise ValueError(f"{key}: dtype {dtype}; expected float32 in the golden key lists.")
    state[key] = None if key in tied_to else _random_tensor(key, shape, generator)
  for key, source in tied_to.items():
    if tuple(state[source].shape) != tuple(next(s for k, s, _ in keys if k == key)):
      raise ValueError(f"tied {key} and {source} have different shapes in the key list.")
    state[key] = state[source]
  return {key: state[key] for key, _, _ in keys if isinstance(state[key], torch.Tensor)}


def write_from_keys(root: str, fmt: str, seed: int = 0, golden_dir: str = GOLDEN_DIR) -> dict:
  """UNITER `.pt`, ViLBERT `.bin` or ROSITA `.pkl` from `<golden_dir>/<scorer>_base_keys.json`."""
  import torch  # pylint: disable=import-outside-toplevel
  start = time.perf_counter()
  scorer = FORMATS[fmt][0]
  with open(os.path.join(golden_dir, f"{scorer}_base_keys.json"), encoding="utf-8") as f:
    spec = json.load(f)
  generator = torch.Generator().manual_seed(seed)
  if scorer == "rosita":
    net = spec["pretrain_net"]  # rosita-base.pkl, from which ITR fine-tuning starts
    payload: dict[str, Any] = {}
    for module, keys in net["state"].items():
      payload[module] = _state_from_keys(keys, [], generator)
    payload["text_mlm_head"]["decode.weight"] = payload["text_embeddings"][
        "word_embeddings.weight"]
    payload["epoch"] = 20
    count = sum(len(v) for v in payload.values() if isinstance(v, dict))
  else:
    payload = _state_from_keys(spec["keys"], spec.get("tied", []), generator)
    count = len(payload)
  init = time.perf_counter() - start
  start = time.perf_counter()
  path = checkpoint_path(root, fmt)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  torch.save(payload, path + ".tmp")
  os.replace(path + ".tmp", path)
  return {fmt: {"init_seconds": init, "write_seconds": time.perf_counter() - start,
                "keys": count}}


def write(root: str, fmt: str, size: str = "base", seed: int = 0) -> dict[str, dict]:
  """Writes checkpoint `fmt` under `root`; returns {format: timings}."""
  if fmt in ("lxmert_hf", "lxmert_lxrt"):
    return write_lxmert(root, size, seed, formats=(fmt,))
  if fmt == "clip_hf":
    return write_clip(root, size, seed)
  if size != "base":
    raise ValueError(f"{fmt} exists only at its base size (the golden key list).")
  return write_from_keys(root, fmt, seed)


def _count_params(params) -> int:
  import jax  # pylint: disable=import-outside-toplevel
  return int(sum(np.size(x) for x in jax.tree_util.tree_leaves(params)))


def load(scorer: str, path: str) -> dict:
  """Loads `path` through `scorers.get(scorer).load`, then scores 2 captions (a forward check)."""
  start = time.perf_counter()
  import jax  # pylint: disable=import-outside-toplevel
  import scorers  # pylint: disable=import-outside-toplevel
  spec = scorers.get(scorer)
  imports = time.perf_counter() - start
  start = time.perf_counter()
  config, params = spec.load(path)
  load_seconds = time.perf_counter() - start
  start = time.perf_counter()
  scores = _forward_scores(spec, config, params)
  return {"scorer": scorer, "path": path, "import_seconds": imports, "load_seconds": load_seconds,
          "params": _count_params(params), "forward_seconds": time.perf_counter() - start,
          "scores": [float(s) for s in np.asarray(scores)],
          "finite": bool(np.all(np.isfinite(np.asarray(jax.device_get(scores)))))}


def _forward_scores(spec, config, params):
  """Two short captions on random images through the scorer's own image side and score."""
  rng = np.random.default_rng(0)
  tokenizer, fmt = spec.tokenizer(config), spec.text_format(config)
  encoded = tokenizer([fmt.text("a man riding a horse"), fmt.text("two dogs on the grass")],
                      padding="max_length", truncation=True, max_length=12, return_tensors="np")
  ids = np.asarray(encoded["input_ids"], np.int32)
  mask = np.asarray(encoded["attention_mask"], np.int32)
  if spec.image_kind == "pixels":
    images = {"pixels": rng.integers(0, 256, (2, config.image_size, config.image_size, 3),
                                     np.uint8)}
  else:
    x1y1 = rng.uniform(0, 0.6, (2, 36, 2))
    boxes = np.concatenate([x1y1, x1y1 + rng.uniform(0.05, 0.4, (2, 36, 2))], -1)
    images = {"region_feats": np.maximum(rng.standard_normal((2, 36, 2048)), 0).astype(np.float32),
              "region_boxes": boxes.astype(np.float32), "region_mask": np.ones((2, 36), np.int32)}
  inputs = spec.image_inputs(params, config, images)
  return spec.score(params, config, ids, mask, inputs)


def lxmert_parity(path: str, batch: int = 4, regions: int = 36, text_len: int = 14) -> dict:
  """Our LXMERT (loaded from the HF directory) against `transformers` on one small batch."""
  import jax  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel
  from scorers import lxmert  # pylint: disable=import-outside-toplevel
  config, params = lxmert.load(path)
  model = transformers.LxmertForPreTraining.from_pretrained(path).eval()
  rng = np.random.default_rng(1)
  lengths = np.linspace(text_len, 4, batch).astype(int)
  mask = (np.arange(text_len)[None] < lengths[:, None]).astype(np.int32)
  ids = np.where(mask, rng.integers(1000, config.vocab_size, (batch, text_len)), 0)
  ids[:, 0] = 101
  ids[np.arange(batch), lengths - 1] = 102
  ids = ids.astype(np.int32)
  x1y1 = rng.uniform(0, 0.6, (batch, regions, 2))
  boxes = np.concatenate([x1y1, x1y1 + rng.uniform(0.05, 0.4, (batch, regions, 2))], -1)
  feats = np.maximum(rng.standard_normal((batch, regions, 2048)), 0).astype(np.float32)
  region_mask = np.ones((batch, regions), np.int32)
  images = {"region_feats": feats, "region_boxes": boxes.astype(np.float32),
            "region_mask": region_mask}
  with torch.no_grad():
    kwargs = dict(input_ids=torch.tensor(ids, dtype=torch.long), visual_feats=torch.tensor(feats),
                  visual_pos=torch.tensor(boxes, dtype=torch.float32),
                  attention_mask=torch.tensor(mask), visual_attention_mask=torch.tensor(region_mask))
    ref_logits = model(**kwargs).cross_relationship_score.numpy()
    ref = model.lxmert(**kwargs)
  logits, out = jax.jit(lambda p, *a: lxmert.Model(config).apply({"params": p}, *a))(
      params, ids, mask, images)
  scores = lxmert.score(params, config, ids, mask, lxmert.image_inputs(params, config, images))
  expected = 100 * torch.softmax(torch.tensor(ref_logits), -1)[:, 1].numpy()
  diff = lambda ours, theirs: float(np.max(np.abs(np.asarray(ours) - np.asarray(theirs))))
  return {"scorer": "lxmert", "batch": f"{batch} captions x {regions} regions, text {text_len}",
          "max_abs_diff": {"itm_logits": diff(logits, ref_logits),
                           "pooled_output": diff(out["pooled_output"], ref.pooled_output.numpy()),
                           "language_output": diff(out["language_output"],
                                                   ref.language_output.numpy()),
                           "vision_output": diff(out["vision_output"], ref.vision_output.numpy()),
                           "score (x100 prob)": diff(scores, expected)},
          "logit_range": float(np.ptp(ref_logits))}


def clip_parity(path: str, batch: int = 4, text_len: int = 12) -> dict:
  """Our CLIP (loaded from the HF directory) against `transformers` on one small batch."""
  import jax  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel
  from scorers import clip  # pylint: disable=import-outside-toplevel
  config, params = clip.load(path)
  model = transformers.CLIPModel.from_pretrained(path).eval()
  rng = np.random.default_rng(2)
  lengths = np.linspace(text_len, 3, batch).astype(int)
  mask = (np.arange(text_len)[None] < lengths[:, None]).astype(np.int32)
  ids = np.where(mask, rng.integers(300, 49000, (batch, text_len)), 49407)
  ids[:, 0] = 49406
  ids[np.arange(batch), lengths - 1] = 49407
  ids = ids.astype(np.int32)
  pixels = rng.integers(0, 256, (batch, config.image_size, config.image_size, 3), np.uint8)
  pixel_values = np.asarray(clip.preprocess(pixels, config.image_size))
  text, image = jax.jit(lambda p, i, m, x: clip.Model(config).apply(
      {"params": p}, i, m, x, method=clip.Model.init_all))(params, ids, mask, pixel_values)
  with torch.no_grad():
    ref = model(input_ids=torch.tensor(ids, dtype=torch.long),
                attention_mask=torch.tensor(mask),
                pixel_values=torch.from_numpy(pixel_values.transpose(0, 3, 1, 2).copy()))
  scores = clip.score(params, config, ids, mask, clip.image_inputs(params, config,
                                                                   {"pixels": pixels}))
  expected = 100 * (ref.text_embeds * ref.image_embeds).sum(-1).numpy()
  diff = lambda ours, theirs: float(np.max(np.abs(np.asarray(ours) - np.asarray(theirs))))
  return {"scorer": "clip", "batch": f"{batch} captions of up to {text_len} tokens, "
                                     f"{batch} images {config.image_size} px",
          "max_abs_diff": {"text_embeds": diff(text["text_embeds"], ref.text_embeds.numpy()),
                           "image_embeds": diff(image["image_embeds"], ref.image_embeds.numpy()),
                           "score (100 x cos)": diff(scores, expected)}}


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m vlprobe_jax.bench.rehearsal_checkpoints",
                                   description=__doc__.split("\n\n")[0])
  commands = parser.add_subparsers(dest="command", required=True)
  write_cmd = commands.add_parser("write", help="write one checkpoint format under --out")
  write_cmd.add_argument("--format", required=True, choices=sorted(FORMATS))
  write_cmd.add_argument("--out", required=True, help="the checkpoints folder")
  write_cmd.add_argument("--size", default="base", choices=("base", "tiny"))
  write_cmd.add_argument("--seed", type=int, default=0)
  for name in ("load", "parity"):
    sub = commands.add_parser(name, help=f"{name} a checkpoint through the scorer")
    sub.add_argument("--scorer", required=True)
    sub.add_argument("--path", required=True)
  args = parser.parse_args(argv)
  if args.command == "write":
    result = write(args.out, args.format, args.size, args.seed)
  elif args.command == "load":
    result = load(args.scorer, args.path)
  else:
    parity = {"lxmert": lxmert_parity, "clip": clip_parity}.get(args.scorer)
    if parity is None:
      raise SystemExit(f"parity with transformers exists for lxmert and clip; not {args.scorer}.")
    result = parity(args.path)
  print(RESULT_PREFIX + json.dumps(result), flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
