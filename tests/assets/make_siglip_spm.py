"""Makes `scorers/assets/siglip-test-spiece.model`: a small SentencePiece model in SigLIP's format.

SigLIP's released tokenizer (`spiece.model` of google/siglip-base-patch16-224, the T5 `c4_en`
unigram model, 32,000 pieces) cannot be downloaded here, so the tests and the synthetic world use
this stand-in, trained offline with the `sentencepiece` package in the same layout: a unigram
model, `<pad>` = 0, `</s>` = 1, `<unk>` = 2, no BOS, NFKC normalisation, a dummy "▁" prefix,
pieces never crossing whitespace. 1,000 pieces, so that most words split into several pieces
(the property tests in tests/test_tokens.py need multi-piece words).

Training text, all from this repository: every whole alphabetic word of the bundled
bert-base-uncased vocabulary (one per line, ~21,000 lines) and the reference captions of a
small synthetic world (seed 0, 300 training images), so the world's words are common pieces.

Run from the repository root (takes a few seconds; the output is byte-identical across runs
with sentencepiece 0.2.x, one thread):
  python tests/assets/make_siglip_spm.py
"""

from __future__ import annotations

import hashlib
import io
import os
import sys

import sentencepiece as spm

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from scorers import tokens  # pylint: disable=wrong-import-position
from vlprobe_jax.data import synthetic  # pylint: disable=wrong-import-position

OUT = os.path.join(ROOT, "scorers", "assets", "siglip-test-spiece.model")


def corpus() -> list[str]:
  with open(tokens.BERT_UNCASED_VOCAB, encoding="utf-8") as f:
    words = [line.strip() for line in f]
  lines = [w for w in words[1996:] if w.isascii() and w.isalpha()]
  world = synthetic.default_world_config()
  world.update(num_train=300, num_val=20, num_test=20)
  dataset = synthetic.make_world(world)
  lines += [caption for refs in dataset["train"].references for caption in refs]
  return lines


def main() -> None:
  lines = corpus()
  buffer = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(lines), model_writer=buffer, model_type="unigram", vocab_size=1000,
      pad_id=0, eos_id=1, unk_id=2, bos_id=-1, pad_piece="<pad>", eos_piece="</s>",
      unk_piece="<unk>", normalization_rule_name="nmt_nfkc", character_coverage=1.0,
      num_threads=1, shuffle_input_sentence=False, minloglevel=2)
  with open(OUT, "wb") as f:
    f.write(buffer.getvalue())
  print(f"{OUT}: {len(buffer.getvalue()):,} bytes, {len(lines):,} training lines, "
        f"MD5 {hashlib.md5(buffer.getvalue()).hexdigest()}")


if __name__ == "__main__":
  main()
