"""The reward-throughput benchmark: vocabulary, config, the PyTorch reference model, smoke runs.

The smoke runs (`runlocal`, tiny sizes) check the structure of what the benchmark prints and
returns, never its timings.
"""

import importlib.util
import json
import math
import os

import jax
import numpy as np
import pytest

from configs import bench_reward
from scorers import tokens
from vlprobe_jax import captioner as captioner_lib
from vlprobe_jax import decoding
from vlprobe_jax.bench import build as bench_setup
from vlprobe_jax.bench import run as bench

HAS_TORCH = importlib.util.find_spec("torch") is not None


@pytest.fixture
def one_torch_thread():
  """One intra-op thread: on a loaded 2-core machine OpenMP barriers make tiny ops take 20 ms."""
  if not HAS_TORCH:
    yield
    return
  import torch
  threads = torch.get_num_threads()
  torch.set_num_threads(1)
  yield
  torch.set_num_threads(threads)


def test_benchmark_words_are_realistic_for_both_tokenizers():
  words = bench_setup.benchmark_words(9487, 0.08)
  assert len(words) == 9488 and words[0] == "" and words[-1] == "UNK"
  assert len(set(words)) == len(words)
  bert = tokens.bert_tokenizer()
  table = tokens.build_table(words, bert, tokens.TextFormat(101, 102, 0, 20))
  multi = np.mean(table.npieces[1:-1] > 1)
  assert 0.06 <= multi <= 0.10  # the compounds, and only they, split into several WordPieces
  assert tokens.unrepresentable_words(words[:-1], bert, table.fmt) == []
  clip = tokens.clip_tokenizer()
  clip_table = tokens.build_table(words, clip, tokens.TextFormat(49406, 49407, 49407, 77))
  assert np.mean(clip_table.npieces[1:] > 1) > multi  # BPE splits more words than WordPiece
  assert bench_setup.benchmark_words(9487, 0.08) == words  # seeded


def test_benchmark_words_rejects_bad_sizes():
  with pytest.raises(ValueError, match="vocab_words"):
    bench_setup.benchmark_words(1, 0.1)
  with pytest.raises(ValueError, match="more whole words"):
    bench_setup.benchmark_words(40000, 0.0)


def test_batch_sizes_and_dtype():
  assert bench_setup.batch_sizes("50,250, 1000") == [50, 250, 1000]
  assert bench_setup.batch_sizes(8) == [8]
  for bad in ("", "fifty", "0,4"):
    with pytest.raises(ValueError, match="images_per_batch"):
      bench_setup.batch_sizes(bad)
  assert bench_setup.resolve_dtype("auto", "cpu") == "float32"
  assert bench_setup.resolve_dtype("auto", "gpu") == "bfloat16"
  with pytest.raises(ValueError, match="config.dtype"):
    bench_setup.resolve_dtype("float16", "gpu")


def test_config_defaults_are_the_real_sizes():
  config = bench_reward.get_config("scorer=clip")
  assert config.entry == "bench_reward" and config.scorer == "clip"
  assert config.vocab_words == 9487 and config.captioner.rnn_size == 512
  assert config.captioner.fc_dim == 2048 and config.scorer_size == "default"
  assert config.num_samples == 5 and config.max_length == 16 and config.reference
  assert config.workdir == "workdir/bench_clip" and config.out_json == "bench.json"
  assert config.profile_dir == ""
  # Ratios of equal work: the reference runs at every batch size the JAX step runs at.
  assert config.images_per_batch == "250,1000" and config.reference_images == ""
  assert (config.attention, config.gelu, config.length_groups) == ("auto", "exact", 8)
  assert bench_reward.get_config(None).scorer == "lxmert"
  with pytest.raises(ValueError, match="supports"):
    bench_reward.get_config("scorer=blip")


def test_random_params_have_the_init_tree():
  config = captioner_lib.CaptionerConfig(vocab_size=12, fc_dim=6, embed_size=4, rnn_size=5)
  init = lambda rng: captioner_lib.init_params(config, rng)
  params = bench_setup.random_params(init, config, seed=0)
  expected = jax.eval_shape(init, jax.random.key(0))
  assert jax.tree.structure(params) == jax.tree.structure(expected)
  jax.tree.map(lambda a, b: np.testing.assert_equal(a.shape, b.shape), params, expected)
  assert np.all(np.asarray(params["logit"]["bias"]) == 0.0)
  assert 0.01 < float(np.std(params["logit"]["kernel"])) < 0.03


def test_variants_are_parsed_and_checked():
  assert bench_setup.parse_variants("") == []
  assert bench_setup.parse_variants("attention=xla; gelu=tanh,length_groups=1") == [
      {"attention": "xla"}, {"gelu": "tanh", "length_groups": 1}]
  assert bench_setup.parse_variants("captioner_dtype=bfloat16;policy_gradient=sampling") == [
      {"captioner_dtype": "bfloat16"}, {"policy_gradient": "sampling"}]
  for bad in ("attention=flash", "length_groups=0", "dropout=0.1", "gelu"):
    with pytest.raises(ValueError, match="config.variants"):
      bench_setup.parse_variants(bad)
  from vlprobe_jax import validation
  config = bench_reward.get_config("runlocal")
  config.variants = "gelu=erf"
  config.attention = "flash"
  with pytest.raises(validation.ConfigError) as error:
    validation.validate(config)
  assert "config.attention='flash'" in str(error.value) and "'gelu=erf'" in str(error.value)


def test_reference_skipped_when_off():
  config = bench_reward.get_config("runlocal")
  config.reference = False
  assert bench.run_reference(None, config, None, None) == (None, "reference=False")


@pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed")
def test_torch_fc_model_decodes_like_the_flax_captioner():
  import torch
  from vlprobe_jax.bench import torch_reference as bench_torch
  config = captioner_lib.CaptionerConfig(vocab_size=30, fc_dim=8, embed_size=6, rnn_size=7)
  params = captioner_lib.init_params(config, jax.random.key(3))
  fc = np.random.default_rng(0).normal(size=(5, 8)).astype(np.float32)
  flax_seq, flax_logprobs = decoding.decode_captions(config, params, fc, 6, method="greedy")
  model = bench_torch.FCModel(30, 8, 6, 7, 0.5)
  bench_torch.load_flax_params(model, jax.device_get(params))
  model.eval()
  with torch.no_grad():
    seq, logprobs = bench_torch.decode(model, torch.from_numpy(fc), 6, sample=False)
  width = seq.shape[1]  # The torch loop may stop early once every row has ended.
  np.testing.assert_array_equal(seq.numpy(), np.asarray(flax_seq)[:, :width])
  np.testing.assert_allclose(logprobs.numpy(), np.asarray(flax_logprobs)[:, :width], atol=1e-5)
  assert bench_torch.ids_to_strings(np.array([[2, 1, 0, 3], [0, 5, 5, 5]]),
                                    ["", "a", "b", "c", "d", "e"]) == ["b a", ""]


def _finite(value):
  return value is not None and math.isfinite(value)


@pytest.mark.parametrize("scorer", ["lxmert", "clip"])
def test_runlocal_smoke(scorer, tmp_path, capsys, one_torch_thread):
  config = bench_reward.get_config(f"scorer={scorer},runlocal")
  config.workdir = str(tmp_path)
  if scorer == "clip":
    config.profile_dir = str(tmp_path / "profile")
  else:
    config.variants = "policy_gradient=sampling,length_groups=1"
  summary = bench.run(config)
  printed = capsys.readouterr().out

  assert summary["scorer"] == scorer and summary["dtype"] == "float32"  # "auto" on the CPU
  assert summary["vocab_size"] == 200 and summary["multi_piece_words"] > 0
  # LXMERT: raw regions fed, image inputs in the step (as on COCO); CLIP: cached embeddings.
  assert summary["image_inputs"].startswith("computed" if scorer == "lxmert" else "cached")
  (result,) = summary["results"]
  assert result["images_per_batch"] == 4 and result["captions_per_step"] == 4 * 3
  parts = result["jax"]["parts"]
  expected_parts = {"full", "decode", "reward", "score", "update"}
  expected_parts |= {"image_side"} if scorer == "lxmert" else set()
  assert set(parts) == expected_parts
  for name in ("full", "decode", "reward", "score"):
    part = parts[name]
    assert part["ms_per_step"] > 0 and part["compile_s"] > 0
    assert part["captions_per_s"] == pytest.approx(12 / (part["ms_per_step"] / 1e3))
    assert len(part["repeats_ms"]) == config.repeats
  assert _finite(parts["update"]["ms_per_step"])
  assert ("image_side" in parts["update"]["derived"]) == (scorer == "lxmert")
  data = result["jax"]["data"]
  assert data["wait_ms_per_step"] >= 0 and 0 <= data["wait_fraction"] < 10
  assert all(_finite(v) for v in result["jax"]["measurements"].values())
  check = result["dtype_check"]
  assert check["captions"] == 12 and 0 <= check["max_abs_diff"] < 5.0
  assert 0.0 <= check["advantage_sign_agreement"] <= 1.0
  reward = parts["reward"]
  assert reward["length_groups"] == 1 and len(reward["group_widths"]) == 1  # 12 captions
  assert "reward text widths" in printed
  if scorer == "lxmert":
    gelu = result["gelu_check"]  # tanh vs exact GELU, in the CPU's float32
    assert gelu["captions"] == 12 and gelu["dtype"] == "float32" and gelu["max_abs_diff"] < 1.0
    assert "tanh vs exact GELU scores" in printed
    (variant,) = result["variants"]
    assert variant["changes"] == {"policy_gradient": "sampling", "length_groups": 1}
    assert variant["full"]["ms_per_step"] > 0 and variant["speedup"] > 0
    assert "x the first row with policy_gradient=sampling, length_groups=1" in printed
  else:
    assert result["gelu_check"] is None and result["variants"] == []
  assert summary["versions"]["jax"] == jax.__version__

  if HAS_TORCH:
    reference = result["torch"]
    assert set(reference["parts"]) == {"decode", "strings_tokenize", "score", "update", "full"}
    assert all(p["ms_per_step"] > 0 for p in reference["parts"].values())
    assert reference["tokenizer"].endswith("(fast=True)")
    assert set(result["ratio"]) == {"full_step", "score", "decode"}
    assert all(_finite(r) and r > 0 for r in result["ratio"].values())
    assert "ratio jax/torch" in printed and "torch  full step (reference)" in printed
  else:
    assert result["torch"] is None and "torch is not importable" in result["torch_skipped"]
  assert "jax    full SCST step" in printed and "bf16 vs fp32 scores" in printed
  assert "BatchIterator wait" in printed

  assert summary["summary_path"] == str(tmp_path / "bench.json")
  with open(tmp_path / "bench.json") as f:
    assert json.load(f)["results"][0]["captions_per_step"] == 12
  if config.profile_dir:
    written = [name for _, _, names in os.walk(config.profile_dir) for name in names]
    assert any(name.endswith(".xplane.pb") for name in written)
    # A CPU trace has no device events; the summary says so instead of inventing numbers.
    assert result["profile"]["trace"] and "no device events" in result["profile"]["note"]
    assert "profile: the trace holds no device events" in printed
  else:
    assert result["profile"] is None


# UNITER in CI; ROSITA and ViLBERT take the same bench path (a region scorer, its image side in
# the step) and 35 s and 85 s of CI each: VLPROBE_ALL_SCORERS=1 runs them too.
_ALL = bool(os.environ.get("VLPROBE_ALL_SCORERS"))


@pytest.mark.parametrize("scorer", [
    "uniter",
    pytest.param("rosita", marks=pytest.mark.skipif(not _ALL, reason="VLPROBE_ALL_SCORERS=1")),
    pytest.param("vilbert", marks=pytest.mark.skipif(not _ALL, reason="VLPROBE_ALL_SCORERS=1"))])
def test_runlocal_smoke_of_the_scorers_without_a_reference(scorer, tmp_path, capsys):
  config = bench_reward.get_config(f"scorer={scorer},runlocal")
  config.workdir = str(tmp_path)
  summary = bench.run(config)
  printed = capsys.readouterr().out
  (result,) = summary["results"]
  parts = result["jax"]["parts"]
  assert set(parts) == {"full", "decode", "reward", "score", "update", "image_side"}
  assert all(parts[name]["ms_per_step"] > 0 for name in ("full", "decode", "reward", "score"))
  assert summary["image_inputs"].startswith("computed")
  assert result["torch"] is None and result["ratio"] is None
  expected = "no PyTorch reference" if HAS_TORCH else "torch is not importable"
  assert expected in result["torch_skipped"] and expected in printed
  assert all(_finite(v) for v in result["jax"]["measurements"].values())
  assert result["dtype_check"]["captions"] == 12


@pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed")
@pytest.mark.parametrize("scorer", ["siglip", "blip_itm"])
def test_torch_reference_scores_like_the_flax_scorer(scorer, tmp_path, one_torch_thread):
  """The reference pipeline's SigLIP / BLIP (image side once, then per caption, with their own
  padding and [ENC]) gives the Flax scorer's scores on the same weights, to 1e-3 of 100."""
  import shutil
  import torch
  import scorers
  from vlprobe_jax.bench import torch_reference as bench_torch
  spec = scorers.get(scorer)
  reference = bench_torch._SCORERS[scorer](spec.tiny_config()).eval()  # pylint: disable=protected-access
  reference.model.save_pretrained(str(tmp_path))
  if scorer == "siglip":
    shutil.copy(tokens.SIGLIP_TEST_SPM, tmp_path / "spiece.model")
  config, params = spec.load(str(tmp_path))
  tokenizer, fmt = spec.tokenizer(config), spec.text_format(config)
  captions = ["a red circle above a blue square", "two small stars", "", "a big green cross"]
  encoded = tokenizer(captions, padding=reference.padding, truncation=True,
                      max_length=fmt.max_length, return_tensors="np")
  ids = np.asarray(encoded["input_ids"], np.int32)
  mask = np.asarray(encoded["attention_mask"], np.int32)
  rng = np.random.default_rng(0)
  pixels = rng.integers(0, 256, (4, config.image_size, config.image_size, 3), np.uint8)
  with torch.no_grad():
    images = reference.encode_images({"pixels": torch.from_numpy(pixels)})
    expected = reference(torch.from_numpy(ids.astype(np.int64)),
                         torch.from_numpy(mask.astype(np.int64)), images).numpy()
  ours = spec.score(params, config, ids, mask, spec.image_inputs(params, config,
                                                                 {"pixels": pixels}))
  np.testing.assert_allclose(np.asarray(ours), expected, rtol=0, atol=1e-3)


def test_runlocal_smoke_of_a_pixel_scorer(tmp_path, capsys, one_torch_thread):
  """BLIP reads pixels: the image side (vision tower and every layer's cross K/V) runs once per
  image in the step, and its transformers model is the reference. (SigLIP goes the same way
  through the benchmark; its reference model is checked just above.)"""
  scorer = "blip_itm"
  config = bench_reward.get_config(f"scorer={scorer},runlocal")
  config.workdir = str(tmp_path)
  config.dtype_check = False  # The generic check; the smoke tests above cover it.
  summary = bench.run(config)
  printed = capsys.readouterr().out
  assert summary["image_inputs"].startswith("computed")
  (result,) = summary["results"]
  parts = result["jax"]["parts"]
  assert set(parts) == {"full", "decode", "reward", "score", "update", "image_side"}
  assert all(parts[name]["ms_per_step"] > 0 for name in ("full", "decode", "reward", "score"))
  assert all(_finite(v) for v in result["jax"]["measurements"].values())
  if not HAS_TORCH:
    assert result["torch"] is None
    return
  reference = result["torch"]
  assert reference["scorer"] == "BlipForImageTextRetrieval"
  assert reference["text_width"] == 35  # BLIP's code pads to max_length=35.
  assert all(p["ms_per_step"] > 0 for p in reference["parts"].values())
  assert all(_finite(r) and r > 0 for r in result["ratio"].values())
  assert "ratio jax/torch" in printed
