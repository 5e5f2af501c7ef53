"""Section 5 of the paper: captions built to test what a scorer rewards, and their scores.

A visual word is a token spaCy tags NOUN or PROPN, except position words ("front" in "in front
of", "top", "right": `analysis.pos.POSITION_WORDS`) and the captioner's UNK: they show nothing
of the image (see `analysis.pos` for the rule). Three probes, each run against every scorer
function `(captions, image_ids) -> [N] scores`:

* `replacement_probe` (Figure 2): the XE captions as they are; with every visual word replaced
  by a wrong noun (drawn from `noun_pool`, never a word of that image's references nor one of
  the caption's own nouns); and with every other word replaced by a random word (drawn from
  `word_pool`, never a word of that image's references), visual words kept. Captions without
  visual words are left out of all three.
* `template_probe` (Table 7): the visual words of each XE caption (in order, each once) poured
  into the scorer's template from the paper, e.g. UNITER `a+NOUN+of+the+(NOUN)*`. Every
  template is also scored by every scorer (the `matrix`).
* `visual_words_probe` (Figure 3): per image, the visual words of its references (most
  mentioned first); the first k of them, k = 3..7, poured into each scorer's template. These are
  generated captions ("a box of a red of a snow ..."), one per image and k; only images with at
  least max(k) such words are used, the same images for every k. For scale, each image's first
  reference caption is scored too.

Every probe reports, per scorer and kind of caption, the mean, the standard deviation and the
number of captions scored.

Random choices come from `numpy.random.default_rng(seed)`, walking images in sorted id order,
so results depend only on the inputs and the seed.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np

from analysis.pos import NOUN_TAGS, POSITION_WORDS, TaggedCaption, tag_captions

ScoreFn = Callable[[list[str], list[int]], np.ndarray]
SLOT = "NOUN"
CAPTIONER_UNK = "UNK"  # vlprobe_jax.data.vocab.UNK


@dataclasses.dataclass(frozen=True)
class Template:
  """A sentence template: `head` once, then `repeat` once per remaining visual word.

  "NOUN" marks a slot. With fewer nouns than slots in `head`, the head is cut right after the
  last filled slot ("a dog" from UNITER's template with one noun).
  """
  head: tuple[str, ...]
  repeat: tuple[str, ...]

  def fill(self, nouns: Sequence[str]) -> str:
    if not nouns:
      raise ValueError("analysis/probes.py: Template.fill needs at least one noun.")
    nouns = list(nouns)
    words = []
    for position, token in enumerate(self.head):
      if token == SLOT and not nouns:  # out of nouns: end after the last filled slot
        last_slot = max(j for j, t in enumerate(self.head[:position]) if t == SLOT)
        return " ".join(words[:last_slot + 1])
      words.append(nouns.pop(0) if token == SLOT else token)
    while nouns:
      for token in self.repeat:
        if token == SLOT and not nouns:
          break
        words.append(nouns.pop(0) if token == SLOT else token)
    return " ".join(words)

  def __str__(self) -> str:
    return "+".join(self.head) + "+(" + "+".join(self.repeat) + ")*"


# Table 7 of the paper, per scorer name.
TEMPLATES = {
    "uniter": Template(("a", SLOT, "of", "the", SLOT), (SLOT,)),
    "rosita": Template(("a", "image", "image", "that", "is", "a", "a", SLOT),
                       ("but", "a", "a", SLOT)),
    "vilbert": Template(("a", SLOT, "that", "the", SLOT), ("at", "the", SLOT)),
    "clip": Template(("a", "image", "image", "of", SLOT), ("near", "a", SLOT)),
    "lxmert": Template(("a", SLOT), ("of", "a", SLOT)),
}
# For a scorer the paper did not probe: noun phrases joined by a plain conjunction.
DEFAULT_TEMPLATE = Template(("a", SLOT), ("and", "a", SLOT))


def is_visual(word: str, pos: str) -> bool:
  """A noun that names something seen: not a position word, not the captioner's UNK."""
  return pos in NOUN_TAGS and word != CAPTIONER_UNK and word not in POSITION_WORDS


def visual_words(tagged: TaggedCaption) -> list[str]:
  """The caption's visual words, in order (see the module docstring)."""
  return [w for w, p in zip(tagged.words, tagged.pos) if is_visual(w, p)]


def _stats(values: np.ndarray) -> dict:
  """{"mean", "std", "n"} of scores (NaN mean and std when there are none)."""
  if len(values) == 0:
    return {"mean": float("nan"), "std": float("nan"), "n": 0}
  return {"mean": float(np.mean(values)), "std": float(np.std(values)), "n": int(len(values))}


def template_for(scorer: str) -> Template:
  return TEMPLATES.get(scorer.lower(), DEFAULT_TEMPLATE)


def score_all(fn: ScoreFn, captions: Sequence[str], image_ids: Sequence[int],
              batch_size: int = 1024) -> np.ndarray:
  """A scorer function applied in batches; returns [N] float64."""
  out = []
  for start in range(0, len(captions), batch_size):
    part = np.asarray(fn(list(captions[start:start + batch_size]),
                         [int(i) for i in image_ids[start:start + batch_size]]), np.float64)
    if part.shape != (min(batch_size, len(captions) - start),):
      raise ValueError(f"analysis/probes.py: a score function returned shape {part.shape} for "
                       f"{min(batch_size, len(captions) - start)} captions; it must return one "
                       "score per caption.")
    out.append(part)
  return np.concatenate(out) if out else np.zeros((0,), np.float64)


def _reference_words(references: Mapping[int, Sequence[str]], image_id: int) -> set[str]:
  return {w for r in references.get(image_id, ()) for w in r.split()}


def _draw(rng: np.random.Generator, pool: Sequence[str], banned: set[str]) -> str | None:
  """A uniform draw from pool minus banned (None if empty); rejection first, as banned is small."""
  for _ in range(64):
    word = pool[rng.integers(len(pool))] if pool else None
    if word is None or word not in banned:
      return word
  allowed = [w for w in pool if w not in banned]
  return allowed[rng.integers(len(allowed))] if allowed else None


def replacement_probe(captions: Mapping[int, str], references: Mapping[int, Sequence[str]],
                      score_fns: Mapping[str, ScoreFn], noun_pool: Sequence[str],
                      word_pool: Sequence[str], tagged: Mapping[int, TaggedCaption] | None = None,
                      seed: int = 0) -> dict:
  """Figure 2: mean scores of the captions, with nouns replaced, and with the rest replaced.

  Args:
    captions: image id -> XE caption.
    references: image id -> reference captions (their words are never drawn for that image).
    score_fns: scorer name -> (captions, image_ids) -> [N] scores.
    noun_pool: candidate wrong nouns (e.g. every noun the tagger found in the captions).
    word_pool: candidate random words for the non-visual positions (not nouns).
    tagged: image id -> tagged caption, when already tagged.
    seed: the random seed.

  Returns:
    {"num_captions": n, "scores": {scorer: {"original", "replace_nouns", "replace_others"}}
     (means), "spread": {scorer: {kind: {"mean", "std", "n"}}},
     "examples": [{"image_id", "original", "replace_nouns", "replace_others"}] (first 5)}.
  """
  ids = sorted(captions)
  if tagged is None:
    tagged = dict(zip(ids, tag_captions([captions[i] for i in ids])))
  rng = np.random.default_rng(seed)
  nouns_sorted, words_sorted = sorted(set(noun_pool)), sorted(set(word_pool) - set(noun_pool))
  kept, original, swapped_nouns, swapped_others = [], [], [], []
  for i in ids:
    t = tagged[i]
    is_noun = [is_visual(w, p) for w, p in zip(t.words, t.pos)]
    if not any(is_noun):
      continue
    banned = _reference_words(references, i) | set(t.nouns())
    new_nouns, new_others = [], []
    for word, noun in zip(t.words, is_noun):
      new_nouns.append((_draw(rng, nouns_sorted, banned) or word) if noun else word)
      new_others.append(word if noun else (_draw(rng, words_sorted, banned) or word))
    kept.append(i)
    original.append(" ".join(t.words))
    swapped_nouns.append(" ".join(new_nouns))
    swapped_others.append(" ".join(new_others))
  scores, spread = {}, {}
  for name, fn in score_fns.items():
    spread[name] = {kind: _stats(score_all(fn, texts, kept))
                    for kind, texts in (("original", original), ("replace_nouns", swapped_nouns),
                                        ("replace_others", swapped_others))}
    scores[name] = {kind: s["mean"] for kind, s in spread[name].items()}
  examples = [{"image_id": i, "original": a, "replace_nouns": b, "replace_others": c}
              for i, a, b, c in list(zip(kept, original, swapped_nouns, swapped_others))[:5]]
  return {"num_captions": len(kept), "scores": scores, "spread": spread, "examples": examples}


def _unique(words: Sequence[str]) -> list[str]:
  return list(dict.fromkeys(words))


def template_probe(captions: Mapping[int, str], score_fns: Mapping[str, ScoreFn],
                   tagged: Mapping[int, TaggedCaption] | None = None) -> dict:
  """Table 7: scores of the XE captions and of their visual words in each scorer's template.

  Returns:
    {"num_captions": n,
     "table": {scorer: {"template": str, "original": mean of the captions as they are,
               "recons": mean of their reconstructions, "original_std", "recons_std"}},
     "matrix": {template owner: {scorer: mean}},  (every template under every scorer)
     "examples": {template owner: [(XE caption, reconstruction)] (first 3)}}.
    A template owner is a scorer name of TEMPLATES, or "default" for DEFAULT_TEMPLATE (which
    also stands for every scorer the paper did not probe).
  """
  ids = sorted(captions)
  if tagged is None:
    tagged = dict(zip(ids, tag_captions([captions[i] for i in ids])))
  kept = [i for i in ids if visual_words(tagged[i])]
  nouns = [_unique(visual_words(tagged[i])) for i in kept]
  base = [" ".join(tagged[i].words) for i in kept]
  # One row per distinct template: a scorer's own, or "default" for those the paper lacks.
  owner_of = {name: name if name.lower() in TEMPLATES else "default" for name in score_fns}
  owners = {owner: TEMPLATES.get(owner.lower(), DEFAULT_TEMPLATE)
            for owner in list(owner_of.values()) + ["default"]}
  built = {owner: [t.fill(n) for n in nouns] for owner, t in owners.items()}
  matrix = {owner: {} for owner in owners}
  table = {}
  for name, fn in score_fns.items():
    original = _stats(score_all(fn, base, kept))
    spreads = {owner: _stats(score_all(fn, texts, kept)) for owner, texts in built.items()}
    for owner, stats in spreads.items():
      matrix[owner][name] = stats["mean"]
    own = spreads[owner_of[name]]
    table[name] = {"template": str(owners[owner_of[name]]), "original": original["mean"],
                   "recons": own["mean"], "original_std": original["std"],
                   "recons_std": own["std"]}
  examples = {owner: list(zip(base[:3], texts[:3])) for owner, texts in built.items()}
  return {"num_captions": len(kept), "table": table, "matrix": matrix, "examples": examples}


def tag_references(references: Mapping[int, Sequence[str]],
                   image_ids: Sequence[int]) -> dict[int, list[TaggedCaption]]:
  """POS tags of the reference captions of the given images (one tagger pass for all)."""
  flat = [(i, r) for i in image_ids for r in references[i]]
  out = {i: [] for i in image_ids}
  for (i, _), t in zip(flat, tag_captions([r for _, r in flat])):
    out[i].append(t)
  return out


def word_pools(tagged: Iterable[TaggedCaption]) -> tuple[list[str], list[str]]:
  """(nouns, other words): every word seen, split by whether it is mostly tagged a noun.

  Position words are never in the noun pool: they are no visual words.

  The noun pool gives the wrong visual words of `replacement_probe`, the other pool its random
  non-visual words.
  """
  noun_count, total = collections.Counter(), collections.Counter()
  for t in tagged:
    for w, p in zip(t.words, t.pos):
      total[w] += 1
      noun_count[w] += p in NOUN_TAGS
  total.pop(CAPTIONER_UNK, None)
  nouns = sorted(w for w in total if 2 * noun_count[w] > total[w] and w not in POSITION_WORDS)
  others = sorted(w for w in total if noun_count[w] == 0)
  return nouns, others


def reference_nouns(tagged_references: Mapping[int, Sequence[TaggedCaption]],
                    seed: int = 0) -> dict[int, list[str]]:
  """Per image, the distinct nouns of its references, most mentioned (by captions) first.

  Ties are broken by a seeded random order, so the ranking is reproducible.
  """
  rng = np.random.default_rng(seed)
  out = {}
  for i in sorted(tagged_references):
    mentions = collections.Counter(n for t in tagged_references[i] for n in set(visual_words(t)))
    words = sorted(mentions)
    tiebreak = dict(zip(words, rng.permutation(len(words))))
    out[i] = sorted(words, key=lambda w: (-mentions[w], tiebreak[w]))
  return out


def visual_words_probe(references: Mapping[int, Sequence[str]],
                       score_fns: Mapping[str, ScoreFn], k_values: Sequence[int] = (3, 4, 5, 6, 7),
                       max_images: int | None = None, seed: int = 0,
                       tagged_references: Mapping[int, Sequence[TaggedCaption]] | None = None
                       ) -> dict:
  """Figure 3: mean score of template captions with k visual words from the references.

  Args:
    references: image id -> reference captions.
    score_fns: scorer name -> score function.
    k_values: numbers of visual words.
    max_images: use at most this many eligible images (a seeded sample), None for all.
    seed: the random seed (tie-breaks between equally mentioned nouns, the sample).
    tagged_references: image id -> tagged references, when already tagged.

  Returns:
    {"k": [...], "num_images": n (one generated caption per image and k),
     "scores": {scorer: [mean score per k]}, "std": {scorer: [standard deviation per k]},
     "counts": {scorer: [captions scored per k]},
     "reference": {scorer: {"mean", "std", "n"}} (each image's first reference caption),
     "templates": {scorer: str}, "examples": {scorer: [caption per k] for the first image}}.
  """
  ids = sorted(references)
  if tagged_references is None:
    tagged_references = tag_references(references, ids)
  ranked = reference_nouns({i: tagged_references[i] for i in ids}, seed)
  need = max(k_values)
  eligible = [i for i in ids if len(ranked[i]) >= need]
  if max_images is not None and len(eligible) > max_images:
    rng = np.random.default_rng(seed + 1)
    eligible = sorted(rng.choice(eligible, size=max_images, replace=False).tolist())
  scores, std, counts, reference, templates, examples = {}, {}, {}, {}, {}, {}
  first_references = [references[i][0] for i in eligible]
  for name, fn in score_fns.items():
    template = template_for(name)
    templates[name] = str(template)
    per_k = [_stats(score_all(fn, [template.fill(ranked[i][:k]) for i in eligible], eligible))
             for k in k_values]
    scores[name] = [s["mean"] for s in per_k]
    std[name] = [s["std"] for s in per_k]
    counts[name] = [s["n"] for s in per_k]
    reference[name] = _stats(score_all(fn, first_references, eligible))
    examples[name] = [template.fill(ranked[eligible[0]][:k]) for k in k_values] if eligible else []
  return {"k": list(k_values), "num_images": len(eligible), "scores": scores, "std": std,
          "counts": counts, "reference": reference, "templates": templates,
          "examples": examples}
