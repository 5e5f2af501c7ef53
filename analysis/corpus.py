"""The text captions are compared with: references (metrics, probes) and the LM's training text.

A `Corpus` comes either from the project's own dataset (`Corpus.from_dataset`) or from files
anyone has (`corpus_from_files`), without any synthetic world:

* references: a Karpathy-split json (`dataset_coco.json`, `dataset_flickr8k.json`: {"images":
  [{"split", "cocoid" or "imgid", "sentences": [{"raw"}]}]}), whose images of one split
  (default "test") give the references; or a COCO captions json (`captions_val2014.json`:
  {"annotations": [{"image_id", "caption"}]}), all of whose captions are references.
  Image ids are COCO's `cocoid` when the Karpathy file has it (COCO), else its `imgid`
  (Flickr8k/30k); a captions file must use the same ids.
* the language model's text: the training captions of a Karpathy json (splits "train" and
  "restval" by default: Karpathy's 113,287 COCO training images), every caption of a COCO
  captions json (e.g. `captions_train2014.json`), or a plain text file with one caption per line.

Every caption passes through `analysis.text.normalize` (same tokenizer and bad-caption policy as
the captions analysed), so references, LM text and captions are tokenized alike. Where a caption
came from (file, format, split, counts) is kept in `Corpus.provenance` for the report.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence

from analysis import java
from analysis import text as text_lib

KARPATHY_LM_SPLITS = ("train", "restval")


@dataclasses.dataclass
class Corpus:
  """The text the analysis compares captions with.

  Attributes:
    train_captions: tokenized training captions (the language model's data), or None when
      there is none: perplexity is then skipped with a note.
    references: image id -> reference captions (lower-case tokens separated by spaces) of the
      evaluated split; empty when there are none: metrics and probes are then skipped.
    provenance: where both came from, for the report: {"references": str, "lm": str,
      "tokenizer": str, "skipped": [{"key", "reason", "text"}]}.
  """
  train_captions: list[list[str]] | None
  references: dict[int, list[str]]
  provenance: dict = dataclasses.field(default_factory=dict)

  @classmethod
  def from_dataset(cls, dataset, split: str = "test") -> "Corpus":
    """From a `vlprobe_jax.data.dataset.Dataset`: its train references and `split`'s."""
    train = [r.split() for refs in dataset["train"].references for r in refs]
    evaluated = dataset[split]
    references = {int(i): list(refs) for i, refs in zip(evaluated.image_ids,
                                                          evaluated.references)}
    provenance = {"references": f"the run's dataset, {split} split ({len(references)} images, "
                                f"{sum(len(r) for r in references.values())} captions)",
                  "lm": f"the run's dataset, train split ({len(train)} captions)"}
    return cls(train_captions=train, references=references, provenance=provenance)


def _load_json(path: str, role: str):
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path}: {role} file not found; expected a Karpathy json or a COCO "
                            "captions json (see analysis/corpus.py).")
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except json.JSONDecodeError as error:
    raise ValueError(f"{path}: not valid JSON ({error}); expected a Karpathy json or a COCO "
                     f"captions json for the {role}.") from error


def detect_format(data, path: str) -> str:
  """"karpathy" or "coco" for a loaded json; a clear error for anything else."""
  if isinstance(data, Mapping):
    images = data.get("images")
    if isinstance(images, list) and images and isinstance(images[0], Mapping) and (
        "sentences" in images[0]):
      return "karpathy"
    if isinstance(data.get("annotations"), list):
      return "coco"
    found = sorted(data)[:8]
  else:
    found = type(data).__name__
  raise ValueError(f"{path}: expected a Karpathy json ({{\"images\": [{{\"split\", \"cocoid\" "
                   f"or \"imgid\", \"sentences\": [{{\"raw\"}}]}}]}}) or a COCO captions json "
                   f"({{\"annotations\": [{{\"image_id\", \"caption\"}}]}}); found {found}.")


def _karpathy_id(image: Mapping, n: int, path: str) -> int:
  for key in ("cocoid", "imgid", "id"):
    if key in image:
      return int(image[key])
  raise ValueError(f"{path}: images[{n}] has no 'cocoid', 'imgid' or 'id'; expected a "
                   "Karpathy-split json.")


def _raw(sentence) -> object:
  """A Karpathy sentence's raw text (its tokens joined when there is no "raw")."""
  if isinstance(sentence, Mapping):
    if "raw" in sentence:
      return sentence["raw"]
    if isinstance(sentence.get("tokens"), list):
      return " ".join(map(str, sentence["tokens"]))
  return sentence  # anything else is refused or skipped by the normaliser


def _karpathy_pairs(data: Mapping, path: str,
                    splits: Sequence[str] | None) -> list[tuple[int, object]]:
  out, seen = [], set()
  for n, image in enumerate(data["images"]):
    split = image.get("split")
    seen.add(split)
    if splits is not None and split not in splits:
      continue
    image_id = _karpathy_id(image, n, path)
    out.extend((image_id, _raw(s)) for s in image.get("sentences", []))
  if not out:
    raise ValueError(f"{path}: no captions in split(s) {list(splits or [])}; the file has "
                     f"splits {sorted(map(str, seen))}. Pass the split to use.")
  return out


def _coco_pairs(data: Mapping, path: str) -> list[tuple[int, object]]:
  out = []
  for n, ann in enumerate(data["annotations"]):
    if not isinstance(ann, Mapping) or "image_id" not in ann or "caption" not in ann:
      raise ValueError(f"{path}: annotations[{n}] must have 'image_id' and 'caption'; found "
                       f"{str(ann)[:120]}.")
    out.append((int(ann["image_id"]), ann["caption"]))
  return out


def read_captions_with_ids(path: str, split: str | Sequence[str] | None
                           ) -> tuple[list[tuple[int, object]], str]:
  """(image id, caption as read) pairs from a Karpathy json (images of `split`, all when None)
  or a COCO captions json (all captions), in file order, and a description of what was read."""
  data = _load_json(path, "captions")
  if detect_format(data, path) == "karpathy":
    splits = [split] if isinstance(split, str) else split
    where = f"Karpathy json, split {'+'.join(splits)}" if splits else "Karpathy json"
    return _karpathy_pairs(data, path, splits), where
  return _coco_pairs(data, path), "COCO captions json"


def read_text_lines(path: str) -> list[tuple[str, object]]:
  """("line n", text) pairs of a plain text file, one caption per line."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path}: language-model text file not found.")
  with open(path, encoding="utf-8") as f:
    return [(f"line {n}", line.rstrip("\n")) for n, line in enumerate(f, 1)]


def read_references(path: str, split: str = "test", *, policy: str = "refuse",
                    tokenizer: str = "auto", timeout_s: float = java.DEFAULT_TIMEOUT_S
                    ) -> tuple[dict[int, list[str]], str, list[text_lib.Skipped]]:
  """Normalised references of a Karpathy json (images of `split`) or a COCO captions json.

  Returns:
    ({image id: [references]}, a one-line description, [skipped captions]).
  """
  pairs, where = read_captions_with_ids(path, split)
  keyed = [((image_id, n), caption) for n, (image_id, caption) in enumerate(pairs)]
  clean, skipped = text_lib.normalize(
      keyed, what="reference caption", source=path, policy=policy, tokenizer=tokenizer,
      timeout_s=timeout_s)
  references: dict[int, list[str]] = {}
  for (image_id, _), caption in clean.items():
    references.setdefault(image_id, []).append(caption)
  count = sum(len(r) for r in references.values())
  return references, f"{path} ({where}: {len(references)} images, {count} captions)", skipped


def read_lm_text(path: str, splits: Sequence[str] = KARPATHY_LM_SPLITS, *,
                 policy: str = "refuse", tokenizer: str = "auto",
                 timeout_s: float = java.DEFAULT_TIMEOUT_S
                 ) -> tuple[list[list[str]], str, list[text_lib.Skipped], set[int]]:
  """The LM's training captions from a Karpathy json, a COCO captions json or a text file.

  Returns:
    (tokenized captions, a one-line description, [skipped captions], image ids of the captions
    (empty for a text file), so overlap with the evaluated images can be reported).
  """
  if path.endswith(".txt"):
    pairs, where, ids = read_text_lines(path), "text file, one caption per line", set()
    keyed = pairs
  else:
    with_ids, where = read_captions_with_ids(path, list(splits))
    ids = {image_id for image_id, _ in with_ids}
    keyed = [(f"image {image_id} caption #{n}", caption)
             for n, (image_id, caption) in enumerate(with_ids)]
  clean, skipped = text_lib.normalize(keyed, what="language-model caption", source=path,
                                      policy=policy, tokenizer=tokenizer, timeout_s=timeout_s)
  captions = [c.split() for c in clean.values()]
  return captions, f"{path} ({where}: {len(captions)} captions)", skipped, ids


def corpus_from_files(references: str | None = None, lm_corpus: str | None = None, *,
                      references_split: str = "test",
                      lm_splits: Sequence[str] = KARPATHY_LM_SPLITS, policy: str = "refuse",
                      tokenizer: str = "auto", timeout_s: float = java.DEFAULT_TIMEOUT_S,
                      fallback: Corpus | None = None) -> Corpus:
  """A Corpus from files; what no file gives comes from `fallback` (else: none).

  Args:
    references: a Karpathy json or COCO captions json, or None.
    lm_corpus: a Karpathy json, COCO captions json or text file, or None (no perplexity).
    references_split: the Karpathy split whose images give the references.
    lm_splits: the Karpathy splits whose captions train the language model.
    policy, tokenizer, timeout_s: see `analysis.text.normalize`.
    fallback: e.g. `Corpus.from_dataset(...)` of the runs being analysed.
  """
  tokenizer = text_lib.resolve_tokenizer(tokenizer)
  base = fallback or Corpus(train_captions=None, references={})
  provenance = {"references": base.provenance.get("references", "none"),
                "lm": base.provenance.get("lm", "none"), "tokenizer": tokenizer, "skipped": []}
  refs, train = base.references, base.train_captions
  if references:
    refs, provenance["references"], skipped = read_references(
        references, references_split, policy=policy, tokenizer=tokenizer, timeout_s=timeout_s)
    provenance["skipped"] += [s.as_dict() for s in skipped]
  if lm_corpus:
    train, provenance["lm"], skipped, lm_ids = read_lm_text(
        lm_corpus, lm_splits, policy=policy, tokenizer=tokenizer, timeout_s=timeout_s)
    provenance["skipped"] += [s.as_dict() for s in skipped]
    shared = lm_ids & set(refs)
    if shared:
      provenance["lm_overlap"] = (f"{len(shared)} of the {len(refs)} reference images also "
                                  "give language-model captions: their perplexity is "
                                  "optimistic")
  return Corpus(train_captions=train, references=refs, provenance=provenance)


def corpus_from_config(config, fallback: Corpus | None = None) -> Corpus:
  """`corpus_from_files` with the fields of `configs/analysis.py`'s config."""
  return corpus_from_files(
      references=config.get("references"), lm_corpus=config.get("lm_corpus"),
      references_split=config.get("references_split", "test"),
      lm_splits=tuple(config.get("lm_splits", KARPATHY_LM_SPLITS)),
      policy=config.get("bad_captions", "refuse"), tokenizer=config.get("tokenizer", "auto"),
      timeout_s=float(config.get("java_timeout_s", java.DEFAULT_TIMEOUT_S)), fallback=fallback)
