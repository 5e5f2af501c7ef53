"""A scorer with a known preference, for tests of the SCST step: it rewards one word.

score = 100 if the caption's tokens contain `target_id` else 0. It follows the scorer contract
(scorers/registry.py) in the parts the SCST step uses; the rest refuses to run.
"""

import dataclasses

import jax.numpy as jnp

from scorers import registry
from scorers import tokens


@dataclasses.dataclass(frozen=True)
class Config:
  target_word: str = "red"
  max_text_len: int = 20
  dtype: str = "float32"


def tokenizer(config):
  del config
  return tokens.bert_tokenizer(cased=False)


def text_format(config):
  return tokens.text_format(tokenizer(config), config.max_text_len)


def image_inputs(params, config, images):
  del params, config
  return {"region_mask": jnp.asarray(images["region_mask"])}


def score(params, config, text_ids, text_mask, image_inputs):  # pylint: disable=redefined-outer-name
  del params, image_inputs
  target = tokenizer(config).convert_tokens_to_ids(config.target_word)
  return 100.0 * jnp.any((text_ids == target) & (text_mask > 0), axis=-1).astype(jnp.float32)


def _unused(*args, **kwargs):
  raise NotImplementedError("the fake scorer only scores")


SCORER = registry.Scorer(
    name="fake", objective="itm", match_index=1, image_kind="regions", model=None,
    default_config=lambda variant=None: Config(), tiny_config=Config,
    init_params=lambda config, rng: {"unused": jnp.zeros(())}, load=_unused,
    tokenizer=tokenizer, text_format=text_format, image_inputs=image_inputs, score=score,
    pretrain_loss=_unused)
