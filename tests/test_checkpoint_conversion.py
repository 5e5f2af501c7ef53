"""Checkpoint conversion edge cases the originals decide (issue 20, points 4 and 5): a key under
two names, shapes in the checkpoint's orientation, configs read from the original JSON files,
and ViLBERT's `pooling_method` that the original never reads."""

import json
import os

import jax
import numpy as np
import pytest

from scorers import common
from scorers import lxmert
from scorers import rosita
from scorers import uniter
from scorers import vilbert

ASSETS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets")


def _asset(name):
  with open(os.path.join(ASSETS, name)) as f:
    return json.load(f)


def test_a_key_under_two_names_is_refused_naming_both():
  # torch's load_state_dict would take both `x` and `module.x` as distinct keys; stripping the
  # DataParallel prefix must not let the last one silently win (a bias became zeros).
  state = {"pooler.bias": np.ones(3), "module.pooler.bias": np.zeros(3), "a.b": np.ones(1)}
  with pytest.raises(common.CheckpointMismatch) as error:
    common.strip_prefix(state, "module.", "model.pt")
  message = str(error.value)
  assert "model.pt" in message and "pooler.bias and module.pooler.bias" in message


def test_shape_errors_print_the_checkpoint_shape():
  config = lxmert.tiny_config()
  template = jax.eval_shape(lambda: lxmert.init_params(config, jax.random.key(0)))
  kernel = template["cls"]["seq_relationship"]["kernel"]  # Flax [in=32, out=2]
  state = {"cls.seq_relationship.weight": np.zeros((2, 36), np.float32)}  # torch [out, in]
  with pytest.raises(common.CheckpointMismatch) as error:
    common.torch_to_flax(state, {"cls": template["cls"]}, source="x.pth")
  assert kernel.shape == (32, 2)
  # The checkpoint's own [out, in] orientation on both sides, as torch would print it.
  assert "cls.seq_relationship.weight: (2, 36), expects (2, 32)" in str(error.value)


def test_uniter_config_reads_the_original_json():
  golden = _asset("uniter_tiny_config.json")
  assert uniter.config_from_original(golden["model_config"]) == uniter.tiny_config()
  # ChenRocks/UNITER config/uniter-base.json, img_dim from utils/const.py.
  base = {"attention_probs_dropout_prob": 0.1, "hidden_act": "gelu", "hidden_dropout_prob": 0.1,
          "hidden_size": 768, "initializer_range": 0.02, "intermediate_size": 3072,
          "max_position_embeddings": 512, "num_attention_heads": 12, "num_hidden_layers": 12,
          "type_vocab_size": 2, "vocab_size": 28996}
  assert uniter.config_from_original(base) == uniter.default_config()
  with pytest.raises(ValueError, match="hidden_act='relu'"):
    uniter.config_from_original(dict(base, hidden_act="relu"))
  with pytest.raises(ValueError, match="lacks"):
    uniter.config_from_original({"hidden_size": 768})


def test_rosita_config_reads_the_original_cfg():
  golden = _asset("rosita_tiny_config.json")
  config = rosita.config_from_original(golden["model_config"],
                                       vocab_size=golden["init_map"]["vocab_size"])
  assert config == rosita.tiny_config()
  # MILVLG/rosita config/cfg.py defaults.
  base = {"LAYER": 12, "HSIZE": 768, "HHEAD": 12, "HBASE": 64, "HFF": 3072,
          "POS_EMB_IN_SIZE": 512, "TYPE_EMB_IN_SIZE": 2, "DROPOUT_R": 0.1, "IMGFEAT_SIZE": 2048,
          "USE_BBOXFEAT": True, "BBOXFEAT_SIZE": 5}
  assert rosita.config_from_original(base) == rosita.default_config()
  with pytest.raises(ValueError, match="HBASE"):
    rosita.config_from_original(dict(base, HBASE=32))


def test_vilbert_pooling_method_changes_nothing():
  # vilbert-multi-task vilbert/vilbert.py: BertConfig takes fusion_method="mul" and the heads
  # read config.fusion_method; `pooling_method` (in every released JSON) is never read.
  original = _asset("vilbert_tiny_config.json")["resolved_config"]
  as_released = vilbert.config_from_original(original)
  with_sum = vilbert.config_from_original(dict(original, pooling_method="sum"))
  # The model sees only its config: equal configs, equal ITM logits.
  assert with_sum == as_released and with_sum.fusion_method == "mul"
