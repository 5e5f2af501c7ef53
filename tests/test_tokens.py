"""On-device re-tokenization equals the Hugging Face tokenizers on the joined caption.

The property tests draw batches of 64 random captions over a realistic word list (whole words
of the BERT vocabulary, words that split into several pieces, UNK, apostrophes, hyphens,
digits, accents, punctuation-only words) with empty, short, full and over-long captions, junk
after the first 0, default and narrower widths, and compare `retokenize` (jitted) with
`tokenizer(text, truncation=True, max_length=...)` token for token: exact equality.
"""

import dataclasses
import functools

import hypothesis
import hypothesis.strategies as st
import jax
import numpy as np
import pytest

from scorers import tokens
from vlprobe_jax.data.vocab import Vocab

BATCH = 64

# Caption words the BERT whole-word list lacks: clitics, hyphens, digits, accents, case,
# punctuation-only words (empty under ROSITA's cleaning) and an underscore (ROSITA drops it).
_EXTRA_WORDS = [
    "UNK", "man's", "people's", "t-shirt", "x-ray", "hot-dog", "o'clock", "2", "10", "1st",
    "3d", "café", "piñata", "naïve", "Frisbee", "NYC", "'s", "-", ".", ",", "hot_dog", "tv",
    "skateboarder", "snowboarders", "giraffes", "frisbees", "motorcyclist", "teddy", "a",
]


@functools.lru_cache(maxsize=None)
def caption_words() -> tuple[str, ...]:
  """`Vocab.words`-like: '' first, ~3,000 real words, then 'UNK' last."""
  with open(tokens.BERT_UNCASED_VOCAB, encoding="utf-8") as f:
    entries = [line.rstrip("\n") for line in f]
  whole = [w for w in entries[1996:] if w.isascii() and w.isalpha()]
  rng = np.random.default_rng(0)
  picked = list(rng.choice(whole, size=2500, replace=False))
  # Glued pairs ("horsebrush") are real multi-piece words for WordPiece and BPE alike.
  glued = ["".join(rng.choice(whole, size=2)) for _ in range(300)]
  words = sorted(set(picked + glued + _EXTRA_WORDS) - {"UNK"})
  return ("",) + tuple(words) + ("UNK",)


@functools.lru_cache(maxsize=None)
def tokenizer_for(kind: str):
  if kind == "clip":
    return tokens.clip_tokenizer()
  if kind == "siglip":
    return tokens.siglip_tokenizer()
  if kind == "blip":
    return tokens.blip_tokenizer()
  return tokens.bert_tokenizer(cased=(kind == "bert_cased"))


# name -> (tokenizer kind, max_length, prompt, strip_punctuation, first token): the scorers'
# settings. "first token" replaces the tokenizer's first id, as BLIP's ITM path does with [ENC].
CASES = {
    "bert_uncased": ("bert_uncased", 20, "", False, None),     # LXMERT
    "bert_cased": ("bert_cased", 60, "", False, None),         # UNITER
    "clip": ("clip", 77, "", False, None),                     # CLIP
    "clip_prompt": ("clip", 32, "A photo depicts", False, None),  # CLIP-S with its prompt, short
    "rosita": ("bert_uncased", 30, "", True, None),            # ROSITA
    # SigLIP: SentencePiece, lower-cased, ASCII punctuation deleted, `... </s>` without BOS.
    "siglip": ("siglip", 64, "", False, None),
    "siglip_prompt": ("siglip", 16, "A photo of", False, None),
    "blip_itm": ("blip", 35, "", False, tokens.BLIP_ENC),      # BLIP: [ENC] words [SEP]
}


@functools.lru_cache(maxsize=None)
def table_for(case: str) -> tokens.RetokTable:
  kind, max_length, prompt, strip, first = CASES[case]
  tok = tokenizer_for(kind)
  fmt = tokens.text_format(tok, max_length, prompt=prompt, strip_punctuation=strip)
  if first is not None:
    fmt = dataclasses.replace(fmt, bos_id=tok.convert_tokens_to_ids(first))
  return tokens.build_table(caption_words(), tok, fmt)


_retokenize = jax.jit(tokens.retokenize, static_argnames="width")


def hf_reference(case: str, word_ids: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
  """The HF tokenizer on the joined strings, padded to `width` by hand."""
  table = table_for(case)
  words, fmt = caption_words(), table.fmt
  texts = [fmt.text(caption) for caption in Vocab(tuple(words)).decode_batch(word_ids)]
  enc = tokenizer_for(CASES[case][0])(
      texts, truncation=True, max_length=min(fmt.max_length, width))["input_ids"]
  ids = np.full((len(texts), width), fmt.pad_id, np.int32)
  mask = np.zeros((len(texts), width), np.int32)
  for i, row in enumerate(enc):
    assert len(row) <= width, f"HF gave {len(row)} tokens for {texts[i]!r}; width is {width}"
    ids[i, :len(row)] = row
    mask[i, :len(row)] = 1
  if CASES[case][4] is not None:  # BLIP's ITM: `encoder_input_ids[:, 0] = enc_token_id`.
    ids[:, 0] = fmt.bos_id
  return ids, mask


# One caption length for every batch keeps the jit cache to two programs per case (default and
# narrow width); the lengths themselves vary through where each row's first 0 falls.
LENGTH = 45


def random_captions(seed: int, length: int = LENGTH) -> np.ndarray:
  """[BATCH, length] ids: empty, short, full rows, some with junk after the first 0."""
  rng = np.random.default_rng(seed)
  vocab_size = len(caption_words())
  ids = rng.integers(1, vocab_size, size=(BATCH, length), dtype=np.int32)
  ids[rng.random((BATCH, length)) < 0.05] = vocab_size - 1  # UNK is common in real captions.
  # Half the rows have a captioner-like length (<= 16 words), half any length up to `length`.
  stops = np.where(rng.random(BATCH) < 0.5, rng.integers(0, min(16, length) + 1, size=BATCH),
                   rng.integers(0, length + 1, size=BATCH))
  stops[:3] = [0, length, min(1, length)]
  for i, stop in enumerate(stops):
    if stop < length:
      ids[i, stop] = 0
      if rng.random() < 0.5:  # Everything after the first 0 must be ignored.
        ids[i, stop + 1:] = 0
  return ids


@pytest.mark.parametrize("case", sorted(CASES))
@hypothesis.settings(max_examples=16, deadline=None, derandomize=True)
@hypothesis.given(seed=st.integers(0, 2**32 - 1), narrow=st.booleans())
def test_retokenize_matches_hf_tokenizer(case, seed, narrow):
  table = table_for(case)
  word_ids = random_captions(seed)
  width = 12 if narrow else tokens.max_width(table, LENGTH)
  ids, mask = _retokenize(table, word_ids, width=width if narrow else None)
  want_ids, want_mask = hf_reference(case, word_ids, width)
  np.testing.assert_array_equal(np.asarray(mask), want_mask)
  np.testing.assert_array_equal(np.asarray(ids), want_ids)


@pytest.mark.parametrize("case", sorted(CASES))
def test_over_long_and_empty_captions(case):
  """Every row the longest possible: truncation is exercised on each case, not left to chance."""
  table = table_for(case)
  longest = int(np.argmax(table.npieces))
  word_ids = np.full((BATCH, LENGTH), longest, np.int32)
  word_ids[1, 0] = 0                      # empty caption with junk after it
  ids, mask = _retokenize(table, word_ids)
  want_ids, want_mask = hf_reference(case, word_ids, tokens.max_width(table, LENGTH))
  assert want_mask[0].sum() == table.fmt.max_length  # really over-long
  assert want_mask[1].sum() == table.fmt.num_specials + table.prompt_length
  np.testing.assert_array_equal(np.asarray(ids), want_ids)
  np.testing.assert_array_equal(np.asarray(mask), want_mask)


def test_default_width_is_the_smallest_that_fits():
  table = table_for("clip_prompt")
  longest = int(np.argmax(table.npieces))
  for length in (1, 2, 30):
    ids, _ = jax.eval_shape(tokens.retokenize, table, np.zeros((2, length), np.int32))
    need = 2 + table.prompt_length + length * table.max_pieces
    assert ids.shape == (2, min(table.fmt.max_length, need))
  _, mask = _retokenize(table, np.full((2, 1), longest, np.int32))
  assert np.asarray(mask).all()  # the longest word fills the default width exactly


def test_clip_photo_of_a_cat():
  tok = tokenizer_for("clip")
  assert tok("a photo of a cat")["input_ids"] == [49406, 320, 1125, 539, 320, 2368, 49407]
  fmt = tokens.text_format(tok, 77)
  table = tokens.build_table(["", "a", "photo", "of", "cat"], tok, fmt)
  ids, mask = _retokenize(table, np.array([[1, 2, 3, 1, 4, 0, 0]]))
  assert np.asarray(ids)[0, :7].tolist() == [49406, 320, 1125, 539, 320, 2368, 49407]
  assert np.asarray(ids)[0, 7:].tolist() == [49407] * (ids.shape[1] - 7)  # HF pads with EOT
  assert np.asarray(mask)[0].tolist() == [1] * 7 + [0] * (ids.shape[1] - 7)
  assert len(tok.get_vocab()) == 49408


def test_bert_vocabularies_known_ids():
  """Published ids of bert-base-(un)cased: "Hello world" and friends."""
  uncased, cased = tokenizer_for("bert_uncased"), tokenizer_for("bert_cased")
  assert len(uncased.get_vocab()) == 30522 and len(cased.get_vocab()) == 28996
  assert uncased("Hello world")["input_ids"] == [101, 7592, 2088, 102]
  assert cased("Hello world")["input_ids"] == [101, 8667, 1362, 102]
  assert cased("Hello, my dog is cute")["input_ids"] == [
      101, 8667, 117, 1139, 3676, 1110, 10509, 102]


def test_words_after_eos_are_ignored():
  table = table_for("bert_uncased")
  clean = np.array([[5, 9, 0, 0, 0, 0]], np.int32)
  junk = np.array([[5, 9, 0, 7, 8, 9]], np.int32)
  got_clean, got_junk = _retokenize(table, clean), _retokenize(table, junk)
  np.testing.assert_array_equal(got_clean[0], got_junk[0])
  np.testing.assert_array_equal(got_clean[1], got_junk[1])
  assert int(got_clean[1].sum()) == 2 + table.npieces[5] + table.npieces[9]


def test_leading_dims_and_table_as_argument_or_constant():
  table = table_for("clip_prompt")
  word_ids = random_captions(3, 16).reshape(4, 16, 16)
  as_arg = jax.jit(tokens.retokenize)(table, word_ids)
  as_const = jax.jit(lambda w: tokens.retokenize(table, w))(word_ids)
  flat = hf_reference("clip_prompt", word_ids.reshape(64, 16), tokens.max_width(table, 16))
  for got in (as_arg, as_const):
    np.testing.assert_array_equal(np.asarray(got[0]).reshape(64, -1), flat[0])
    np.testing.assert_array_equal(np.asarray(got[1]).reshape(64, -1), flat[1])
  assert len(jax.tree_util.tree_leaves(table)) == 3


def test_unrepresentable_words_reported():
  words = ["", "dog", "\U0001F600", ".", "UNK"]
  uncased = tokenizer_for("bert_uncased")
  plain = tokens.text_format(uncased, 20)
  rosita = tokens.text_format(uncased, 30, strip_punctuation=True)
  assert tokens.unrepresentable_words(words, uncased, plain) == ["\U0001F600"]
  assert tokens.unrepresentable_words(words, uncased, rosita) == ["\U0001F600", "."]
  clip = tokenizer_for("clip")  # byte-level BPE: every word is representable
  assert tokens.unrepresentable_words(words, clip, tokens.text_format(clip, 77)) == []


def test_build_table_rejects_words_without_eos_entry():
  tok = tokenizer_for("bert_uncased")
  with pytest.raises(ValueError, match=r"words\[0\] must be ''"):
    tokens.build_table(["dog", "cat"], tok, tokens.text_format(tok, 20))
