"""Re-tokenizing captioner word ids into a scorer's token ids, on the device.

The captioner speaks a closed vocabulary (`Vocab.words`, id 0 = EOS/PAD). Every scorer wants
its own sub-word ids: BERT WordPiece (uncased for LXMERT, ViLBERT, ROSITA and BLIP; cased for
UNITER), CLIP's byte-level BPE, or SigLIP's SentencePiece. BERT's basic tokenizer, CLIP's
pre-tokenizer regex and SentencePiece (whose pieces never cross whitespace) all split on
whitespace before anything else, so tokenizing the space-joined caption is the same as
concatenating the tokenizations of its words. We therefore tokenize every captioner word once,
on the host, with the real Hugging Face tokenizer (`build_table`), and assemble the scorer's
sequence on the device with gathers only (`retokenize`): no strings and no host round trip
inside the SCST step.

`RetokTable` is a JAX pytree: its arrays (`pieces`, `npieces`, `prompt_ids`) are leaves and its
`TextFormat` is static metadata, so the table can be passed to a jitted function as an argument
or closed over as a constant; both give the same program.

The tokenizer files ship in `scorers/assets/` (see `LICENSES.md` there), or, for SigLIP, come from
the user's checkpoint directory (`spiece.model`); nothing is downloaded.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import os
import re
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

ASSETS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets")
BERT_UNCASED_VOCAB = os.path.join(ASSETS, "bert-base-uncased-vocab.txt")
BERT_CASED_VOCAB = os.path.join(ASSETS, "bert-base-cased-vocab.txt")
CLIP_BPE = os.path.join(ASSETS, "clip-bpe_simple_vocab_16e6.txt.gz")
# A 1,000-piece stand-in for SigLIP's `spiece.model` (tests/assets/make_siglip_spm.py); real
# checkpoints bring their own file.
SIGLIP_TEST_SPM = os.path.join(ASSETS, "siglip-test-spiece.model")
SIGLIP_CONTEXT = 64
# BLIP adds two tokens to bert-base-uncased (`models/blip.py: init_tokenizer`): the decoder's
# BOS and the token its image-grounded text encoder puts first for ITM.
BLIP_DEC, BLIP_ENC = "[DEC]", "[ENC]"

# The CLIP BPE file holds more merges than CLIP uses: its vocabulary is 49,408 = 256 byte
# symbols + the same 256 with `</w>` + 48,894 merges + 2 specials (openai/CLIP simple_tokenizer).
CLIP_NUM_MERGES = 49152 - 256 - 2
CLIP_SOT = "<|startoftext|>"
CLIP_EOT = "<|endoftext|>"
CLIP_CONTEXT = 77

# ROSITA (`data/load_data_itr.py: clean_text`) deletes every run of characters that are neither
# word characters nor whitespace, and underscores, before BERT tokenization.
_ROSITA_PUNCTUATION = re.compile(r"([^\s\w]|_)+")


def strip_punctuation(text: str) -> str:
  """ROSITA's caption cleaning: drops non-word, non-space characters and underscores."""
  return _ROSITA_PUNCTUATION.sub("", text)


def _require_file(path: str, what: str) -> None:
  if not os.path.isfile(path):
    raise FileNotFoundError(
        f"scorers/tokens.py: the {what} file {path!r} does not exist. The default files ship in "
        f"{ASSETS}; reinstall the package or pass the path of a valid file.")


def bert_tokenizer(cased: bool = False, vocab_path: str | None = None):
  """A Hugging Face BERT WordPiece tokenizer built from a local vocabulary file.

  Args:
    cased: False for bert-base-uncased (LXMERT, ViLBERT, ROSITA: lower-cases and strips
      accents); True for bert-base-cased (UNITER: keeps case and accents).
    vocab_path: a `vocab.txt` (one WordPiece per line) to use instead of the shipped one.

  Returns:
    a `transformers.BertTokenizer` with `do_lower_case = not cased`.
  """
  import transformers  # Host-only; keeps `import scorers.tokens` light for jitted code.
  path = vocab_path or (BERT_CASED_VOCAB if cased else BERT_UNCASED_VOCAB)
  _require_file(path, "BERT vocabulary")
  # transformers 5.x silently ignores `vocab_file=`; the path goes in as `vocab`.
  return transformers.BertTokenizer(path, do_lower_case=not cased, model_max_length=512)


def blip_tokenizer(vocab_path: str | None = None):
  """BLIP's tokenizer: bert-base-uncased plus `[DEC]` (30522) and `[ENC]` (30523).

  Added in that order, as BLIP's `init_tokenizer` does (`bos_token` "[DEC]", then the additional
  special token "[ENC]"), so a 30,522-line vocabulary gives the ids of the released models
  (text vocab_size 30,524). The tokenizer itself still frames text as [CLS] ... [SEP]; the ITM
  path replaces [CLS] by [ENC] (scorers/blip_itm.py).
  """
  tokenizer = bert_tokenizer(cased=False, vocab_path=vocab_path)
  tokenizer.add_special_tokens({"bos_token": BLIP_DEC})
  tokenizer.add_special_tokens({"additional_special_tokens": [BLIP_ENC]})
  return tokenizer


def siglip_tokenizer(spm_path: str | None = None):
  """SigLIP's Hugging Face `SiglipTokenizer` (SentencePiece) from a local `spiece.model`.

  Args:
    spm_path: the checkpoint's `spiece.model`; default the 1,000-piece test model in
      `scorers/assets/` (the synthetic world's tokenizer).

  Returns:
    a `transformers.SiglipTokenizer`: lower-cases, deletes ASCII punctuation, collapses
    whitespace, appends `</s>` (no BOS) and pads with `</s>`; 64-token context.
  """
  import transformers  # Host-only.
  path = spm_path or SIGLIP_TEST_SPM
  _require_file(path, "SentencePiece model")
  try:
    import sentencepiece  # pylint: disable=import-outside-toplevel,unused-import
  except ImportError as error:
    raise ImportError("scorers/tokens.py: SigLIP's tokenizer needs the `sentencepiece` package "
                      "(pip install sentencepiece).") from error
  # Positional: transformers 5.x silently ignores `vocab_file=`.
  return transformers.SiglipTokenizer(path, model_max_length=SIGLIP_CONTEXT)


def _byte_symbols() -> list[str]:
  """The 256 printable stand-ins of byte-level BPE, in CLIP's vocabulary order.

  Printable Latin-1 bytes stand for themselves and come first, in byte order; the other bytes
  follow in byte order, drawn as the code points from 256 upwards (the GPT-2/CLIP convention
  the merges were learnt with; it puts "a</w>" at id 320).
  """
  printable = [b for b in range(256)
               if ord("!") <= b <= ord("~") or ord("\xa1") <= b <= ord("\xac") or b >= ord("\xae")]
  others = sorted(set(range(256)) - set(printable))
  return [chr(b) for b in printable] + [chr(256 + n) for n in range(len(others))]


@functools.lru_cache(maxsize=4)
def _clip_vocab_and_merges(bpe_path: str) -> tuple[dict[str, int], tuple[tuple[str, str], ...]]:
  """Reads CLIP's `bpe_simple_vocab_16e6.txt.gz` into the HF vocab dict and merge list."""
  _require_file(bpe_path, "CLIP BPE merges")
  with gzip.open(bpe_path, "rt", encoding="utf-8") as f:
    lines = f.read().split("\n")
  # Line 0 is a header ("#version: 0.2"); the merges CLIP uses are the next 48,894 lines.
  merges = tuple(tuple(line.split()) for line in lines[1:CLIP_NUM_MERGES + 1])
  if len(merges) != CLIP_NUM_MERGES or any(len(m) != 2 for m in merges):
    raise ValueError(
        f"scorers/tokens.py: {bpe_path!r} should hold a header line and then at least "
        f"{CLIP_NUM_MERGES} merges of two symbols each; found {len(merges)} usable lines. "
        "Pass the original bpe_simple_vocab_16e6.txt.gz of openai/CLIP.")
  symbols = _byte_symbols()
  tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
  tokens += [CLIP_SOT, CLIP_EOT]
  return {t: i for i, t in enumerate(tokens)}, merges


def clip_tokenizer(bpe_path: str | None = None):
  """A Hugging Face CLIP tokenizer built from CLIP's BPE merges file, in memory.

  Args:
    bpe_path: a `bpe_simple_vocab_16e6.txt.gz` to use instead of the shipped one.

  Returns:
    a `transformers.CLIPTokenizer` (49,408 tokens; `<|startoftext|>` = 49406,
    `<|endoftext|>` = 49407, which is also its UNK and, by HF's default, its padding).
  """
  import transformers  # Host-only.
  vocab, merges = _clip_vocab_and_merges(bpe_path or CLIP_BPE)
  return transformers.CLIPTokenizer(vocab=dict(vocab), merges=list(merges),
                                    model_max_length=CLIP_CONTEXT)


@dataclasses.dataclass(frozen=True)
class TextFormat:
  """How a scorer frames a caption: specials, padding, truncation, prompt, cleaning.

  Attributes:
    bos_id: the id put first ([CLS] for BERT, <|startoftext|> for CLIP, [ENC] for BLIP's ITM);
      unused when `add_bos` is False.
    eos_id: the id put after the last kept token ([SEP], <|endoftext|>).
    pad_id: the id of padding slots ([PAD] = 0 for BERT; HF CLIP pads with <|endoftext|>,
      openai's `clip.tokenize` with 0).
    max_length: the tokenizer's truncation length, specials included (HF
      `truncation=True, max_length=...` keeps the first max_length - 2 content tokens).
    prompt: text put before every caption, tokenized as HF tokenizes `prompt + " " + caption`
      (e.g. "A photo depicts"); "" for none.
    strip_punctuation: apply ROSITA's cleaning (`strip_punctuation`) to the text first.
    add_bos: False for tokenizers that only append an end token (SigLIP's `... </s>`).
  """
  bos_id: int
  eos_id: int
  pad_id: int
  max_length: int
  prompt: str = ""
  strip_punctuation: bool = False
  add_bos: bool = True

  def __post_init__(self):
    if self.max_length < self.num_specials:
      raise ValueError(f"TextFormat.max_length must be >= {self.num_specials} to hold the "
                       f"specials; found {self.max_length}.")

  @property
  def num_specials(self) -> int:
    """Special tokens around the content: BOS (if any) and EOS."""
    return 2 if self.add_bos else 1

  def text(self, caption: str) -> str:
    """The string the host-side tokenizer sees for `caption` (for tests and debugging)."""
    text = f"{self.prompt} {caption}" if self.prompt else caption
    return strip_punctuation(text) if self.strip_punctuation else text


def text_format(tokenizer, max_length: int, *, prompt: str = "",
                strip_punctuation: bool = False, pad_id: int | None = None) -> TextFormat:
  """A `TextFormat` with the specials of `tokenizer` ([CLS]/[SEP]/[PAD], SOT/EOT/pad, or only
  SigLIP's </s>, read from what the tokenizer puts around an empty text)."""
  add_bos = len(tokenizer("")["input_ids"]) == 2
  if getattr(tokenizer, "cls_token", None) is not None:
    bos, eos = tokenizer.cls_token_id, tokenizer.sep_token_id
  else:
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
  if not add_bos:
    bos = eos
  pad = tokenizer.pad_token_id if pad_id is None else pad_id
  if bos is None or eos is None or pad is None:
    raise ValueError(
        f"scorers/tokens.py: tokenizer {type(tokenizer).__name__} lacks a start, end or pad "
        f"token (found bos={bos}, eos={eos}, pad={pad}); build the TextFormat by hand.")
  return TextFormat(bos_id=int(bos), eos_id=int(eos), pad_id=int(pad), max_length=max_length,
                    prompt=prompt, strip_punctuation=strip_punctuation, add_bos=add_bos)


@dataclasses.dataclass(frozen=True)
class RetokTable:
  """Per captioner word, its scorer tokens; a pytree (arrays = leaves, `fmt` = static).

  Attributes:
    pieces: [V+1, P] int32, row w holds the scorer ids of captioner word w left-aligned, then
      zeros; row 0 (EOS/PAD) is empty. P = the largest number of pieces of any word (>= 1).
    npieces: [V+1] int32, how many entries of each row of `pieces` are real.
    prompt_ids: [Q] int32, the tokens of `fmt.prompt` (Q = 0 without a prompt).
    fmt: the `TextFormat` (static: changing it recompiles).
  """
  pieces: np.ndarray
  npieces: np.ndarray
  prompt_ids: np.ndarray
  fmt: TextFormat

  @property
  def max_pieces(self) -> int:
    return self.pieces.shape[1]

  @property
  def prompt_length(self) -> int:
    return self.prompt_ids.shape[0]


jax.tree_util.register_dataclass(
    RetokTable, data_fields=["pieces", "npieces", "prompt_ids"], meta_fields=["fmt"])


def _word_ids_of(tokenizer, texts: Sequence[str]) -> list[list[int]]:
  """Host-side tokenization of each text alone, without specials."""
  if not texts:
    return []
  return [list(ids) for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]


def _clean(word: str, fmt: TextFormat) -> str:
  return strip_punctuation(word) if fmt.strip_punctuation else word


def build_table(words: Sequence[str], tokenizer, fmt: TextFormat) -> RetokTable:
  """Tokenizes every captioner word alone with the scorer's real tokenizer.

  Args:
    words: `Vocab.words`; words[0] must be '' (id 0 = EOS/PAD, which gets no pieces).
    tokenizer: the scorer's Hugging Face tokenizer (`bert_tokenizer`, `clip_tokenizer`).
    fmt: the scorer's `TextFormat` (its prompt and cleaning are applied here).

  Returns:
    the `RetokTable` for `retokenize`.
  """
  if not words or words[0] != "":
    raise ValueError(f"scorers/tokens.py build_table: words[0] must be '' (captioner id 0 is "
                     f"EOS/PAD); found {list(words[:1])!r}. Pass Vocab.words.")
  per_word = [[]] + _word_ids_of(tokenizer, [_clean(w, fmt) for w in words[1:]])
  npieces = np.array([len(ids) for ids in per_word], np.int32)
  pieces = np.zeros((len(words), max(1, int(npieces.max()))), np.int32)
  for row, ids in enumerate(per_word):
    pieces[row, :len(ids)] = ids
  prompt = _clean(fmt.prompt, fmt)
  prompt_ids = np.array(_word_ids_of(tokenizer, [prompt])[0] if prompt else [], np.int32)
  return RetokTable(pieces=pieces, npieces=npieces, prompt_ids=prompt_ids, fmt=fmt)


def unrepresentable_words(words: Sequence[str], tokenizer, fmt: TextFormat) -> list[str]:
  """Captioner words (id >= 1) that the scorer sees as its UNK token or as nothing at all.

  Report them once at start: a scorer cannot tell such words apart (UNK) or never sees them
  (empty, e.g. a punctuation-only word under ROSITA's cleaning).
  """
  unk = tokenizer.unk_token_id
  real = list(words[1:]) if words and words[0] == "" else list(words)
  ids = _word_ids_of(tokenizer, [_clean(w, fmt) for w in real])
  return [w for w, t in zip(real, ids) if not t or unk in t]


def max_width(table: RetokTable, caption_length: int) -> int:
  """The smallest width that holds any caption of `caption_length` words, capped by max_length."""
  needed = table.fmt.num_specials + table.prompt_length + caption_length * table.max_pieces
  return min(table.fmt.max_length, needed)


def retokenize(table: RetokTable, word_ids: jax.Array,
               width: int | None = None) -> tuple[jax.Array, jax.Array]:
  """Captioner word ids -> the scorer's token ids and attention mask, as the HF tokenizer gives.

  Equals, row by row, `tokenizer(fmt.text(caption), truncation=True, max_length=M)` padded to
  `width` with `fmt.pad_id`, where caption is the space-joined words before the first 0 and
  M = min(fmt.max_length, width). Jittable; only gathers and elementwise ops, no scatter.

  Args:
    table: from `build_table` (argument or closed-over constant).
    word_ids: [..., L] int32 captioner ids in [0, V]; everything from a row's first 0 on is
      ignored.
    width: W, the output length; defaults to `max_width(table, L)`. A smaller width truncates
      the captions as HF would with max_length = width.

  Returns:
    ids: [..., W] int32, BOS (unless `fmt.add_bos` is False), prompt, caption pieces, EOS,
      then padding.
    mask: [..., W] int32, 1 up to and including EOS, 0 on padding.
  """
  fmt = table.fmt
  *batch, length = word_ids.shape
  width = max_width(table, length) if width is None else int(width)
  if width < fmt.num_specials:
    raise ValueError(f"scorers/tokens.py retokenize: width must be >= {fmt.num_specials} to "
                     f"hold the specials; found {width}.")
  rows = int(np.prod(batch, dtype=np.int64))
  if length == 0:  # No words at all: the same as one EOS column.
    words = jnp.zeros((rows, 1), jnp.int32)
  else:
    words = jnp.asarray(word_ids, jnp.int32).reshape(rows, length)
  # Content = prompt + caption pieces; HF keeps the first budget of them.
  budget = min(fmt.max_length, width) - fmt.num_specials
  num_prompt = table.prompt_length
  first = 1 if fmt.add_bos else 0  # the slot of the first content token

  # The table may hold numpy arrays (a closed-over constant); index them as jax arrays.
  pieces, npieces = jnp.asarray(table.pieces), jnp.asarray(table.npieces)
  alive = jnp.cumprod((words != 0).astype(jnp.int32), axis=1)
  words = words * alive
  counts = npieces[words]                                         # [N, L]
  ends = jnp.cumsum(counts, axis=1)                               # exclusive end per word
  starts = ends - counts
  kept = jnp.minimum(num_prompt + ends[:, -1], budget)            # [N] content tokens kept

  slot = jnp.arange(width, dtype=jnp.int32)
  piece_index = slot - first - num_prompt                         # [W] index among caption pieces
  # The word holding caption piece c is the number of words that end at or before c.
  owner = jnp.sum(ends[:, None, :] <= piece_index[None, :, None], axis=-1)
  owner = jnp.minimum(owner, words.shape[1] - 1)                  # [N, W]
  owner_word = jnp.take_along_axis(words, owner, axis=1)
  within = piece_index[None, :] - jnp.take_along_axis(starts, owner, axis=1)
  within = jnp.clip(within, 0, table.max_pieces - 1)
  ids = pieces[owner_word, within]                                # [N, W]

  if num_prompt:
    prompt_tok = jnp.asarray(table.prompt_ids)[jnp.clip(slot - first, 0, num_prompt - 1)]
    ids = jnp.where((slot >= first) & (slot < first + num_prompt), prompt_tok[None, :], ids)
  eos_slot = (kept + first)[:, None]
  if fmt.add_bos:
    ids = jnp.where(slot[None, :] == 0, fmt.bos_id, ids)
  ids = jnp.where(slot[None, :] == eos_slot, fmt.eos_id, ids)
  ids = jnp.where(slot[None, :] > eos_slot, fmt.pad_id, ids)
  mask = (slot[None, :] <= eos_slot).astype(jnp.int32)
  return ids.reshape(*batch, width), mask.reshape(*batch, width)


def decode(tokenizer, ids: np.ndarray, mask: np.ndarray | None = None) -> list[str]:
  """Host-side, for debugging: [N, W] scorer ids (and mask) -> one string per row, specials kept."""
  ids = np.asarray(ids)
  mask = np.ones_like(ids) if mask is None else np.asarray(mask)
  return [tokenizer.decode([int(t) for t, m in zip(row, keep) if m]) for row, keep in zip(ids, mask)]
