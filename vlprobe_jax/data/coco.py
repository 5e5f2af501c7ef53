"""MSCOCO with the Karpathy split, as the paper used it, turned into a `Dataset`.

Captions come from Karpathy's `dataset_coco.json` (pre-tokenised `sentences[].tokens`) or from
TFDS `coco_captions/2014` (raw sentences, tokenised here with `vocab.tokenize_caption`). As in
Karpathy's split and self-critical.pytorch, "restval" joins "train": 113,287 / 5,000 / 5,000
images. The vocabulary keeps words seen more than `count_threshold` (5) times and maps the rest
to UNK; captions are truncated to `max_length` (16) words; each image gets
`captions_per_image` (5) label rows, its first captions, cycled when it has fewer. Counting the
words of every split, as self-critical's `scripts/prepro_labels.py` does, gives the paper's
9,487 words (UNK included); `vocab_from="train"` counts the training captions only (a few
hundred words fewer; unchecked here, COCO is not available to the tests).

Image features are read from feature stores (`vlprobe_jax/data/feature_store/`) by COCO image
id: the captioner's fc features (required), and optionally the region features, boxes and masks
of the region scorers and, for CLIP, pixels decoded from the image folder on access.

Config fields read (`config.data` in the experiment configs):
  source             "karpathy_json" (default) or "tfds".
  karpathy_json      path of `dataset_coco.json` (source "karpathy_json").
  image_dir          COCO image root holding train2014/ and val2014/ (pixels; optional).
  tfds_data_dir      TFDS data_dir holding a prepared `coco_captions/2014` (source "tfds").
  tfds_name          default "coco_captions/2014".
  fc_store           fc feature store (`feature_store build --kind fc`); required.
  region_store       regions store (`--kind regions`), for LXMERT/UNITER/ViLBERT/ROSITA.
  pixel_store        pixels store (`--kind pixels`: every image resized once, uint8), for
                     SigLIP and BLIP ITM (and CLIP from a `--resize crop` store); instead of
                     image_dir + image_size.
  clip_store         CLIP image-embedding store (`--kind clip`); needs a `Split.image_embeds`
                     field to travel in (until then, give CLIP pixels with image_size).
  count_threshold    5.   max_length  16.   captions_per_image  5.
  vocab_from         "all" (self-critical, default) or "train".
  vocab_json         optional `cocotalk.json`-style vocabulary to reuse instead of building one.
  image_size         0 (no pixels) or the square size of the pixels given to CLIP (224).
  on_error           "stop" (default) or "skip": what to do with images lacking features or
                     captions (skipped images are counted in the log).
  max_images         0 for all, else at most this many images per split (quick runs); the
                     vocabulary is then built from the images loaded.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os

import numpy as np

from vlprobe_jax.data import feature_store
from vlprobe_jax.data import features
from vlprobe_jax.data import vocab as vocab_lib
from vlprobe_jax.data.dataset import Dataset, Split

log = logging.getLogger(__name__)

# Karpathy split name -> our split; "restval" is trained on, as in Karpathy's code.
KARPATHY_SPLITS = {"train": "train", "restval": "train", "val": "val", "test": "test"}
SPLITS = ("train", "val", "test")
TFDS_NAME = "coco_captions/2014"
_DEFAULTS = dict(source="karpathy_json", karpathy_json="", image_dir="", tfds_data_dir=None,
                 tfds_name=TFDS_NAME, fc_store="", region_store="", clip_store="", pixel_store="",
                 count_threshold=5,
                 max_length=16, captions_per_image=5, vocab_from="all", vocab_json="",
                 image_size=0, on_error="stop", max_images=0)


@dataclasses.dataclass
class CocoImage:
  """One image of the split file.

  Attributes:
    image_id: the COCO id.
    split: "train", "val" or "test" (restval already merged into train).
    captions: tokenised captions, lower-case word lists.
    path: image file relative to the image root (e.g. "val2014/COCO_val2014_...jpg"), or None.
    pixels: [S, S, 3] uint8, decoded from TFDS when asked for and no image folder is given.
  """
  image_id: int
  split: str
  captions: list[list[str]]
  path: str | None = None
  pixels: np.ndarray | None = None


def _field(config, name: str):
  """`config.name` from a ConfigDict, dict or object, else the documented default."""
  if isinstance(config, dict):
    value = config.get(name)
  else:
    value = getattr(config, name, None)
  return _DEFAULTS[name] if value is None else value


def read_karpathy_json(path: str) -> list[CocoImage]:
  """Karpathy's `dataset_coco.json` -> its images, in file order.

  Raises:
    FileNotFoundError: no such file.
    features.FeatureError: the file is not the Karpathy layout, or a row has a malformed field
      (the message names the file, the row, the field, what was expected and what was found),
      or one image id appears twice (in two splits or the same one).
  """
  try:
    with open(path, encoding="utf-8") as f:
      payload = json.load(f)
  except FileNotFoundError:
    raise FileNotFoundError(f"karpathy_json {path} does not exist; it is dataset_coco.json from "
                            "Karpathy's caption_datasets.zip.") from None
  except (json.JSONDecodeError, UnicodeDecodeError) as error:
    raise features.FeatureError(f"{path}: not valid JSON ({error}); expected Karpathy's "
                                "dataset_coco.json.") from None
  entries = payload.get("images") if isinstance(payload, dict) else None
  if not isinstance(entries, list):
    raise features.FeatureError(f"{path}: expected Karpathy's dataset_coco.json, an object with "
                                "an 'images' list; found no such list.")
  images, first_row = [], {}
  for number, entry in enumerate(entries):
    image = _karpathy_image(entry, f"{path}: images[{number}]")
    if image.image_id in first_row:
      earlier = first_row[image.image_id]
      raise features.FeatureError(
          f"{path}: images[{number}] has cocoid {image.image_id} (split {image.split!r}), which "
          f"images[{earlier}] already has (split {images[earlier].split!r}); expected each "
          "image once, in one split (an image in two splits leaks test images into training).")
    first_row[image.image_id] = number
    images.append(image)
  return images


def _karpathy_image(entry, where: str) -> CocoImage:
  """One row of the Karpathy json, every field checked; errors name `where` and the field."""
  def fail(field: str, expected: str, found) -> features.FeatureError:
    return features.FeatureError(f"{where}: field {field!r}: expected {expected}; found "
                                 f"{found!r:.120}.")

  if not isinstance(entry, dict):
    raise fail("(row)", "an object", entry)
  for field in ("split", "cocoid", "filename", "sentences"):
    if field not in entry:
      raise features.FeatureError(f"{where}: lacks field {field!r}; expected split, cocoid, "
                                  "filepath, filename and sentences[].tokens.")
  if entry["split"] not in KARPATHY_SPLITS:
    raise fail("split", f"one of {sorted(KARPATHY_SPLITS)}", entry["split"])
  cocoid = entry["cocoid"]
  if isinstance(cocoid, bool) or not (isinstance(cocoid, int) or (
      isinstance(cocoid, str) and cocoid.isdigit())):
    raise fail("cocoid", "an integer image id", cocoid)
  if not isinstance(entry["sentences"], list) or not entry["sentences"]:
    raise fail("sentences", "a non-empty list of {tokens: [...]} objects", entry["sentences"])
  captions = []
  for k, sentence in enumerate(entry["sentences"]):
    tokens = sentence.get("tokens") if isinstance(sentence, dict) else None
    if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
      raise fail(f"sentences[{k}].tokens", "a list of word strings", tokens)
    captions.append(list(tokens))
  for field in ("filepath", "filename"):
    if not isinstance(entry.get(field, ""), str):
      raise fail(field, "a string", entry[field])
  return CocoImage(int(cocoid), KARPATHY_SPLITS[entry["split"]], captions,
                   os.path.join(entry.get("filepath", ""), entry["filename"]))


def read_tfds(name: str = TFDS_NAME, data_dir: str | None = None, max_images: int = 0,
              image_size: int = 0) -> list[CocoImage]:
  """TFDS `coco_captions/2014` -> its images (train + restval as train, val, test).

  Args:
    name: the TFDS name and config.
    data_dir: where the prepared dataset is; nothing is downloaded.
    max_images: per split, 0 for all.
    image_size: when > 0, each image is decoded to [image_size, image_size, 3] uint8 pixels.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  # TF must not take the accelerators JAX is about to use; tf.data runs on the CPU.
  tf.config.set_visible_devices([], "GPU")
  images = []
  counts = dict.fromkeys(SPLITS, 0)
  for tfds_split in ("train", "restval", "val", "test"):
    split = KARPATHY_SPLITS[tfds_split]
    try:
      ds = tfds.load(name, split=tfds_split, data_dir=data_dir or None, download=False,
                     shuffle_files=False, decoders={"image": tfds.decode.SkipDecoding()})
    except Exception as error:  # tfds raises several types for "not prepared".
      raise FileNotFoundError(
          f"TFDS {name} split {tfds_split!r} is not ready in data_dir={data_dir!r} ({error}). "
          f"Prepare it where there is internet (`tfds build {name} --data_dir=DIR`) and set "
          "config.data.tfds_data_dir, or use source='karpathy_json'.") from error
    if max_images:
      ds = ds.take(max(max_images - counts[split], 0))
    for example in tfds.as_numpy(ds):
      texts = [t.decode("utf-8") for t in example["captions"]["text"]]
      filename = example["image/filename"].decode("utf-8")
      pixels = None
      if image_size:
        pixels = features.load_image(bytes(example["image"]), image_size, where=filename)
      images.append(CocoImage(int(example["image/id"]), split,
                              [vocab_lib.tokenize_caption(t) for t in texts], filename, pixels))
      counts[split] += 1
  return images


def _find_image(image: CocoImage, image_dir: str) -> str | None:
  """The image's file under `image_dir`, or None (a bare TFDS name: try train2014/, val2014/)."""
  candidates = [os.path.join(image_dir, image.path or "")]
  if image.path and os.path.dirname(image.path) == "":
    candidates += [os.path.join(image_dir, d, image.path) for d in ("train2014", "val2014")]
  return next((p for p in candidates if os.path.isfile(p)), None)


def _check_available(images: list[CocoImage], split: str, available: np.ndarray, what: str,
                     policy: features.ErrorPolicy) -> list[CocoImage]:
  """Keeps the images whose `what` exists; stop raises on the first lack, skip counts them."""
  lost = [image.image_id for image, ok in zip(images, available) if not ok]
  if not lost:
    return images
  policy.handle(features.FeatureError(
      f"{split}: {len(lost)} of {len(images)} images have no {what} (first ids: {lost[:10]}); "
      "expected all of them. Rebuild the store from files that cover them, or set "
      "config.data.on_error='skip' to drop these images."), count=len(lost))
  log.warning("%s: dropped %d images without %s (on_error='skip').", split, len(lost), what)
  return [image for image, ok in zip(images, available) if ok]


def _make_split(name: str, images: list[CocoImage], vocab: vocab_lib.Vocab, config,
                stores: dict[str, feature_store.FeatureStore]) -> Split:
  ids = np.array([image.image_id for image in images], np.int64)
  labels = vocab_lib.encode_labels(vocab, [image.captions for image in images],
                                   int(_field(config, "captions_per_image")),
                                   int(_field(config, "max_length")))
  split = Split(name=name, image_ids=ids, fc_feats=stores["fc"].gather("fc", ids), labels=labels,
                references=[[" ".join(c) for c in image.captions] for image in images])
  if "regions" in stores:
    split.region_feats = stores["regions"].column("feats", ids)
    split.region_boxes = stores["regions"].column("boxes", ids)
    split.region_mask = stores["regions"].column("mask", ids)
    split.image_wh = stores["regions"].column("image_wh", ids)
  if "clip" in stores:
    split.image_embeds = stores["clip"].column("embedding", ids)
  size = int(_field(config, "image_size"))
  if "pixels" in stores:
    split.pixels = stores["pixels"].column("pixels", ids)
  elif size:
    if _field(config, "image_dir"):  # Paths checked and resolved by `load_coco`.
      split.pixels = features.ImageColumn([image.path for image in images], size)
    else:
      split.pixels = np.stack([image.pixels for image in images]) if images else np.zeros(
          (0, size, size, 3), np.uint8)
  return split


def build_coco_vocab(images: list[CocoImage], count_threshold: int,
                     vocab_from: str = "all") -> vocab_lib.Vocab:
  """The vocabulary from the captions of every image ("all") or of the train split only."""
  if vocab_from not in ("all", "train"):
    raise ValueError(f"config.data.vocab_from must be 'all' or 'train'; found {vocab_from!r}.")
  captions = (c for image in images if vocab_from == "all" or image.split == "train"
              for c in image.captions)
  return vocab_lib.build_vocab(captions, count_threshold)


def load_coco(config) -> Dataset:
  """The Karpathy-split COCO `Dataset` that `config` (the data config) describes."""
  source = _field(config, "source")
  policy = features.ErrorPolicy(_field(config, "on_error"), "images")
  max_images = int(_field(config, "max_images") or 0)
  image_size = int(_field(config, "image_size"))
  if not _field(config, "fc_store"):
    raise ValueError("config.data.fc_store is empty; build the captioner's fc features once with "
                     + feature_store.BUILD_COMMAND.format(kind="fc", out="stores/fc")
                     + " and set config.data.fc_store=stores/fc.")
  # Opened first: a pixel store replaces decoding, so the readers below must not decode.
  store_fields = {"fc": "fc_store", "regions": "region_store", "clip": "clip_store",
                  "pixels": "pixel_store"}
  stores = {kind: feature_store.FeatureStore(_field(config, field), kind)
            for kind, field in store_fields.items() if _field(config, field)}
  if "pixels" in stores:
    pixels = stores["pixels"]
    side = pixels.fields["pixels"][0][0]
    if image_size and image_size != side:
      raise ValueError(f"config.data.image_size={image_size} but the pixel store {pixels.path} "
                       f"holds {side} x {side} images; expected equal sizes (or image_size=0 "
                       "with a pixel store).")
    image_size = 0  # the store's pixels replace decoding images
  if source == "karpathy_json":
    if not _field(config, "karpathy_json"):
      raise ValueError("config.data.karpathy_json is empty; set it to the path of "
                       "dataset_coco.json (or set config.data.source='tfds').")
    where = _field(config, "karpathy_json")
    images = read_karpathy_json(where)
    if image_size and not _field(config, "image_dir"):
      raise ValueError("config.data.image_size > 0 needs config.data.image_dir (the COCO image "
                       "root holding train2014/ and val2014/) with source='karpathy_json'.")
  elif source == "tfds":
    where = f"TFDS {_field(config, 'tfds_name')}"
    decode = image_size if not _field(config, "image_dir") else 0
    images = read_tfds(_field(config, "tfds_name"), _field(config, "tfds_data_dir"), max_images,
                       decode)
  else:
    raise ValueError(f"config.data.source must be 'karpathy_json' or 'tfds'; found {source!r}.")

  by_split = {name: [] for name in SPLITS}
  for image in images:
    if max_images and len(by_split[image.split]) >= max_images:
      continue
    image.captions = [c for c in image.captions if c]
    if not image.captions:
      policy.handle(features.FeatureError(
          f"{where}: image {image.image_id} has no non-empty caption; expected at least one."))
      continue
    by_split[image.split].append(image)
  kept = [image for name in SPLITS for image in by_split[name]]
  if _field(config, "vocab_json"):
    with open(_field(config, "vocab_json")) as f:
      vocab = vocab_lib.Vocab.from_json(f.read(), source=_field(config, "vocab_json"))
  else:
    vocab = build_coco_vocab(kept, int(_field(config, "count_threshold")),
                             _field(config, "vocab_from"))

  if "clip" in stores and "image_embeds" not in {f.name for f in dataclasses.fields(Split)}:
    raise ValueError("config.data.clip_store is set, but dataset.Split has no image_embeds field "
                     "to carry the embeddings yet; leave clip_store empty and give CLIP pixels "
                     "instead (config.data.image_dir and config.data.image_size=224).")
  splits = {}
  for name in SPLITS:
    chosen = by_split[name]
    for kind, store in stores.items():
      ids = np.array([image.image_id for image in chosen], np.int64)
      present = ~np.isin(ids, store.missing(ids))
      chosen = _check_available(chosen, name, present, f"{kind} features in {store.path}",
                                policy)
    if image_size and _field(config, "image_dir"):
      found = [_find_image(image, _field(config, "image_dir")) for image in chosen]
      chosen = _check_available(chosen, name, np.array([f is not None for f in found], bool),
                                f"image file under {_field(config, 'image_dir')}", policy)
      for image, path in zip(chosen, [f for f in found if f is not None]):
        image.path = path
    splits[name] = _make_split(name, chosen, vocab, config, stores)
  policy.log_summary()
  sizes = " / ".join(f"{name} {len(split):,}" for name, split in splits.items())
  vocab_origin = (f"from {_field(config, 'vocab_json')}" if _field(config, "vocab_json") else
                  f"count > {_field(config, 'count_threshold')} in "
                  f"{_field(config, 'vocab_from')} captions")
  description = (f"MSCOCO Karpathy split from {where}: {sizes} images; {vocab.size - 1:,} words "
                 f"(UNK included, {vocab_origin}); captions cut at "
                 f"{_field(config, 'max_length')} words.")
  log.info(description)
  return Dataset(vocab=vocab, splits=splits, description=description)
