"""Caption text as coco-caption expects it, and the checks every caption read from a file passes.

Every caption the analysis reads from a file (a run's captions, reference captions, the language
model's training captions) goes through `normalize` before anything else reads it:

1. It must be a string. JSON null, numbers, lists and objects are refused with the image id
   (policy "refuse", the default), or left out and listed with the reason (policy "skip"): a
   null caption is never analysed as the word "None".
2. Whitespace is folded: newlines, tabs and runs of spaces become one space (a caption is one
   line for the line-based Java tools; a newline inside one would split it in two).
3. It is tokenized as coco-caption does before scoring: Stanford PTBTokenizer with
   `-lowerCase`, then its punctuation tokens removed ("A Dog, on a bed." -> "a dog on a bed";
   "it's" -> "it 's"). Tokenizer "ptb" runs that Java tool; "lower" is a Java-free approximation
   (lower-case, punctuation split off and dropped, clitics split as PTB does) that agrees with
   PTB on most captions; "auto" (default) uses "ptb" when `java` is on PATH, else "lower". The
   tokenizer used is recorded in analysis.json and printed in the report.
4. A caption empty after that ("", "  ", " . ") is refused or skipped like a non-string one.

The captioner's own unknown-word token `UNK` is kept as it is (PTB would lower-case it into an
ordinary word, and the analysis reads `UNK` as "no word"). Tokenizing is idempotent: normalised
text normalises to itself.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Hashable, Iterable, Sequence

from analysis import java

POLICIES = ("refuse", "skip")
TOKENIZERS = ("auto", "ptb", "lower")
CAPTIONER_UNK = "UNK"  # vlprobe_jax.data.vocab.UNK
# A stand-in PTB leaves as it is (lower-case letters only), swapped back to UNK afterwards.
_UNK_STANDIN = "zzcaptionerunkzz"
_PUNCT_CHARS = re.compile(r"""([,!?;:"(){}\[\]`]|\.\.\.|--)""")
# Letters with periods ("t.v.", "u.s.") stay one token, as in PTB; other periods are split off
# unless between digits ("3.5").
_ABBREVIATION = re.compile(r"^(?:[a-z]\.){2,}$")
_PERIOD = re.compile(r"(?<!\d)\.|\.(?!\d)")
_CLITICS = re.compile(r"(\w)('s|'re|'ve|'ll|'d|'m|n't)\b")
_SINGLE_QUOTES = re.compile(r"(^|\s)'(?!(?:s|re|ve|ll|d|m)\b)|'(\s|$)")
_EDGE_HYPHENS = re.compile(r"(?<=\w)-(?=\s|$)|(?<=\s)-(?=\w)|^-(?=\w)")
_DROPPED = java.PTB_PUNCTUATION | {'"'}


@dataclasses.dataclass(frozen=True)
class Skipped:
  """A caption left out under the "skip" policy.

  Attributes:
    key: the image id (or "image id #n" for the n-th reference of an image, "line n", ...).
    reason: why, e.g. "not a string (null)" or "empty after normalisation".
    text: the caption as read, shortened (repr).
  """
  key: str
  reason: str
  text: str

  def as_dict(self) -> dict:
    return dataclasses.asdict(self)


class CaptionError(ValueError):
  """A caption that cannot be analysed under the "refuse" policy."""


def resolve_tokenizer(name: str) -> str:
  """"ptb" or "lower" for a configured tokenizer name ("auto" depends on Java being present)."""
  if name not in TOKENIZERS:
    raise ValueError(f"analysis/text.py: tokenizer must be one of {TOKENIZERS}; found {name!r}.")
  if name == "auto":
    return "ptb" if java.have_java() else "lower"
  return name


def tokenize_lower(text: str) -> str:
  """The Java-free approximation of coco-caption's PTB tokenization (see the module docstring)."""
  text = _PUNCT_CHARS.sub(r" \1 ", java.fold(text).lower())
  words = []
  for word in text.split():
    if not _ABBREVIATION.match(word):
      word = _PERIOD.sub(" . ", word)
    words.append(word)
  text = _SINGLE_QUOTES.sub(r"\1 ' \2", " ".join(words))
  text = _EDGE_HYPHENS.sub(" - ", _CLITICS.sub(r"\1 \2", text))
  return " ".join(w for w in text.split() if w not in _DROPPED)


def tokenize(texts: Sequence[str], tokenizer: str = "auto",
             timeout_s: float = java.DEFAULT_TIMEOUT_S) -> list[str]:
  """Tokenizes strings (whitespace folded, lower-cased, punctuation removed); keeps `UNK`."""
  tokenizer = resolve_tokenizer(tokenizer)
  guarded = [" ".join(_UNK_STANDIN if w == CAPTIONER_UNK else w for w in t.split())
             for t in texts]
  if tokenizer == "ptb":
    out = java.tokenize_ptb(guarded, timeout_s)
  else:
    out = [tokenize_lower(t) for t in guarded]
  return [" ".join(CAPTIONER_UNK if w == _UNK_STANDIN else w for w in t.split()) for t in out]


def _describe(value) -> str:
  if value is None:
    return "not a string (null)"
  return f"not a string ({type(value).__name__})"


def normalize(items: Iterable[tuple[Hashable, object]], *, what: str, source: str,
              policy: str = "refuse", tokenizer: str = "auto",
              timeout_s: float = java.DEFAULT_TIMEOUT_S) -> tuple[dict, list[Skipped]]:
  """Checks and tokenizes captions; see the module docstring for the steps.

  Args:
    items: (key, caption as read) pairs with distinct keys; `str(key)` names the caption in
      messages (an image id, "image 42 reference #3", "line 17").
    what: what the captions are, for messages ("caption", "reference caption").
    source: the file they came from, for messages.
    policy: "refuse" (raise `CaptionError` naming the first bad keys) or "skip" (leave them out
      and return them).
    tokenizer: "auto", "ptb" or "lower".
    timeout_s: the PTB tokenizer's timeout.

  Returns:
    ({key: normalised caption} in input order, the keys as given; [Skipped]).
  """
  if policy not in POLICIES:
    raise ValueError(f"analysis/text.py: bad-caption policy must be one of {POLICIES}; found "
                     f"{policy!r}.")
  bad, keys, texts = [], [], []
  for key, value in items:
    if not isinstance(value, str):
      bad.append(Skipped(str(key), _describe(value), repr(value)[:80]))
    elif not value.strip():
      bad.append(Skipped(str(key), "empty", repr(value)[:80]))
    else:
      keys.append(key)
      texts.append(value)
  tokens = tokenize(texts, tokenizer, timeout_s)
  out = {}
  for key, raw, clean in zip(keys, texts, tokens):
    if clean:
      out[key] = clean
    else:
      bad.append(Skipped(str(key), "empty after normalisation (punctuation only)",
                         repr(raw)[:80]))
  if bad and policy == "refuse":
    listed = "; ".join(f"{b.key}: {b.reason}, found {b.text}" for b in bad[:5])
    raise CaptionError(f"{source}: {len(bad)} {what}(s) cannot be analysed ({listed}"
                       f"{' ...' if len(bad) > 5 else ''}). Every {what} must be a non-empty "
                       "string; fix the file, or pass bad_captions=skip to leave such "
                       "captions out (they are then counted and listed in analysis.json).")
  return out, bad
