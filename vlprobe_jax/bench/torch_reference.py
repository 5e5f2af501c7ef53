"""The reference SCST pipeline in PyTorch: the baseline the compiled step is measured against.

It runs one SCST step the way the original code does (self-critical.pytorch with a VLP reward:
its FC model, sampling loop, `get_self_critical_reward` and `RewardCriterion`), written here
from what that code does:
  1. the FC model (NewFCModel wiring: fc_embed, embed, the 5-chunk maxout LSTMCore, dropout,
     logit) decodes greedily under no_grad with dropout off, then draws K samples per image with
     dropout on and autograd recording, each a Python loop over time steps with
     `torch.multinomial` on the device and an early exit once every row has ended (a host sync
     per step);
  2. the ids go to the CPU and become strings (vocabulary words joined by spaces);
  3. the scorer's Hugging Face tokenizer (the same one `scorers/tokens.py` builds from the
     bundled files; fast for BERT and CLIP, SentencePiece for SigLIP) turns them into ids on the
     CPU, padded to the longest caption (SigLIP and BLIP: to their `max_length`, as their own
     code pads), and they go back to the device;
  4. the PyTorch scorer from `transformers` (random init) scores greedy and samples in one call,
     under bf16 autocast when the JAX side computes in bf16: LXMERT = `LxmertForPreTraining`
     backbone + `cls.seq_relationship` (the masked-LM head it would also run is skipped, which
     only flatters the reference), 100 x softmax[:, 1]; CLIP = `CLIPTextModelWithProjection`,
     100 x cosine with cached unit image embeddings; SigLIP = `SiglipModel`, image embeddings
     once per image from the pixels, then 100 x sigmoid(logit) per caption; BLIP =
     `BlipForImageTextRetrieval`'s ITM path, patch embeddings once per image, the text encoder
     (cross-attention K/V projected per caption, as transformers does) with [ENC] first,
     100 x softmax[:, 1];
  5. reward = score(sample) - score(greedy); RewardCriterion loss; backward; gradients clipped by
     value; Adam.
Float32 matrix products may use TF32 (`set_float32_matmul_precision("high")`), as XLA's default
does on the GPU. torch is imported only in this module.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from vlprobe_jax.data import vocab as vocab_lib

PHASES = ("decode", "strings_tokenize", "score", "update", "full")


class FCModel(nn.Module):
  """NewFCModel with its LSTMCore (maxout cell, no tanh on the cell input)."""

  def __init__(self, vocab_size: int, fc_dim: int, embed_size: int, rnn_size: int,
               dropout: float):
    super().__init__()
    self.rnn_size = rnn_size
    self.fc_embed = nn.Linear(fc_dim, embed_size)
    self.embed = nn.Embedding(vocab_size, embed_size)
    self.i2h = nn.Linear(embed_size, 5 * rnn_size)
    self.h2h = nn.Linear(rnn_size, 5 * rnn_size)
    self.dropout = nn.Dropout(dropout)
    self.logit = nn.Linear(rnn_size, vocab_size)

  def core(self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]):
    h, c = state
    size = self.rnn_size
    sums = self.i2h(x) + self.h2h(h)
    in_gate, forget_gate, out_gate = torch.sigmoid(sums[:, :3 * size]).chunk(3, dim=1)
    cell_input = torch.maximum(sums[:, 3 * size:4 * size], sums[:, 4 * size:])
    c = forget_gate * c + in_gate * cell_input
    return out_gate * torch.tanh(c), c

  def init_state(self, fc_feats: torch.Tensor):
    """The state after pushing the projected image feature through the cell once."""
    zeros = fc_feats.new_zeros(fc_feats.shape[0], self.rnn_size)
    return self.core(self.fc_embed(fc_feats), (zeros, zeros))

  def step(self, tokens: torch.Tensor, state):
    """tokens [N] long -> ([N, V] log-probs, new state)."""
    state = self.core(self.embed(tokens), state)
    return torch.log_softmax(self.logit(self.dropout(state[0])), dim=-1), state


def load_flax_params(model: FCModel, params: dict) -> None:
  """Copies the Flax captioner's params (vlprobe_jax/captioner.py) into `model`."""
  array = lambda x: torch.from_numpy(np.array(x, np.float32))
  linears = {"fc_embed": params["fc_embed"], "i2h": params["core"]["i2h"],
             "h2h": params["core"]["h2h"], "logit": params["logit"]}
  with torch.no_grad():
    for name, leaf in linears.items():
      getattr(model, name).weight.copy_(array(leaf["kernel"]).T)
      getattr(model, name).bias.copy_(array(leaf["bias"]))
    model.embed.weight.copy_(array(params["embed"]["embedding"]))


def decode(model: FCModel, fc_feats: torch.Tensor, max_length: int, *, sample: bool):
  """The Python decode loop: -> (seq [N, T'] long, chosen log-probs [N, T']), T' <= max_length."""
  state = model.init_state(fc_feats)
  tokens = torch.zeros(fc_feats.shape[0], dtype=torch.long, device=fc_feats.device)
  unfinished = torch.ones_like(tokens, dtype=torch.bool)
  seq, logprobs = [], []
  for _ in range(max_length):
    step_logprobs, state = model.step(tokens, state)
    if sample:
      tokens = torch.multinomial(step_logprobs.detach().exp(), 1)[:, 0]
    else:
      tokens = step_logprobs.argmax(dim=-1)
    chosen = step_logprobs.gather(1, tokens[:, None])[:, 0]
    tokens = tokens * unfinished
    seq.append(tokens)
    logprobs.append(chosen * unfinished)
    unfinished = unfinished & (tokens > 0)
    if not bool(unfinished.any()):  # A host sync every step, as in the reference.
      break
  return torch.stack(seq, dim=1), torch.stack(logprobs, dim=1)


def ids_to_strings(seq: np.ndarray, words: Sequence[str]) -> list[str]:
  """Rows of captioner ids -> space-joined words up to the first 0 (decode_sequence)."""
  return vocab_lib.Vocab(tuple(words)).decode_batch(seq)


class LxmertReference(nn.Module):
  """LXMERT ITM score, 100 x softmax(cross_relationship_score)[:, 1], in transformers."""

  def __init__(self, config):
    super().__init__()
    import transformers  # pylint: disable=import-outside-toplevel
    hf_config = transformers.LxmertConfig(
        vocab_size=config.vocab_size, hidden_size=config.hidden_size,
        num_attention_heads=config.num_heads, intermediate_size=config.intermediate_size,
        l_layers=config.l_layers, r_layers=config.r_layers, x_layers=config.x_layers,
        visual_feat_dim=config.visual_feat_dim, visual_pos_dim=config.visual_pos_dim,
        max_position_embeddings=config.max_position, type_vocab_size=config.type_vocab_size,
        task_obj_predict=False, task_qa=False)
    self.model = transformers.LxmertForPreTraining(hf_config)

  def forward(self, ids, mask, images):
    out = self.model.lxmert(input_ids=ids, attention_mask=mask,
                            visual_feats=images["region_feats"],
                            visual_pos=images["region_boxes"],
                            visual_attention_mask=images["region_mask"], return_dict=True)
    logits = self.model.cls.seq_relationship(out.pooled_output).float()
    return 100.0 * logits.softmax(dim=-1)[:, 1]


class ClipReference(nn.Module):
  """CLIP score, 100 x cos(text embedding, cached image embedding), in transformers."""

  def __init__(self, config):
    super().__init__()
    import transformers  # pylint: disable=import-outside-toplevel
    text = transformers.CLIPTextConfig(
        vocab_size=config.vocab_size, hidden_size=config.text_width,
        intermediate_size=config.text_mlp, num_hidden_layers=config.text_layers,
        num_attention_heads=config.text_heads, max_position_embeddings=config.context_length,
        hidden_act=config.hidden_act, layer_norm_eps=config.layer_norm_eps,
        projection_dim=config.projection_dim, eos_token_id=config.eos_token_id)
    self.model = transformers.CLIPTextModelWithProjection(text)

  def forward(self, ids, mask, images):
    embeds = self.model(input_ids=ids, attention_mask=mask).text_embeds.float()
    embeds = embeds / embeds.norm(dim=-1, keepdim=True)
    return 100.0 * (embeds * images["image_embeds"]).sum(dim=-1)


def _normalise(pixels: torch.Tensor, mean, std) -> torch.Tensor:
  """[N, S, S, 3] uint8 at the model's size -> [N, 3, S, S] float, (x / 255 - mean) / std."""
  x = pixels.permute(0, 3, 1, 2).float() / 255.0
  return (x - x.new_tensor(mean)[:, None, None]) / x.new_tensor(std)[:, None, None]


class SiglipReference(nn.Module):
  """SigLIP score, 100 x sigmoid(exp(logit_scale) cos + logit_bias), in transformers.

  Captions padded to max_length and no attention mask (`Config.text_mask=False`): SigLIP pools
  the last position, so padding is part of the input, as in its training.
  """
  padding = "max_length"

  def __init__(self, config):
    super().__init__()
    import transformers  # pylint: disable=import-outside-toplevel
    text = dict(vocab_size=config.vocab_size, hidden_size=config.text_width,
                intermediate_size=config.text_mlp, num_hidden_layers=config.text_layers,
                num_attention_heads=config.text_heads,
                max_position_embeddings=config.context_length, hidden_act=config.hidden_act,
                layer_norm_eps=config.layer_norm_eps, projection_size=config.projection_size)
    vision = dict(hidden_size=config.vision_width, intermediate_size=config.vision_mlp,
                  num_hidden_layers=config.vision_layers,
                  num_attention_heads=config.vision_heads, image_size=config.image_size,
                  patch_size=config.patch_size, hidden_act=config.hidden_act,
                  layer_norm_eps=config.layer_norm_eps)
    self.text_mask = config.text_mask
    self.model = transformers.SiglipModel(
        transformers.SiglipConfig(text_config=text, vision_config=vision))

  def encode_images(self, images):
    pixel_values = _normalise(images["pixels"], (0.5,) * 3, (0.5,) * 3)
    embeds = self.model.vision_model(pixel_values=pixel_values).pooler_output.float()
    return {"image_embeds": embeds / embeds.norm(dim=-1, keepdim=True)}

  def forward(self, ids, mask, images):
    text = self.model.text_model(input_ids=ids, attention_mask=mask if self.text_mask else None)
    embeds = text.pooler_output.float()
    cos = ((embeds / embeds.norm(dim=-1, keepdim=True)) * images["image_embeds"]).sum(dim=-1)
    logits = cos * self.model.logit_scale.exp() + self.model.logit_bias
    return 100.0 * torch.sigmoid(logits)


class BlipItmReference(nn.Module):
  """BLIP ITM score, 100 x softmax(itm_head(text_encoder(...)[:, 0]))[:, 1], in transformers."""
  padding = "max_length"

  def __init__(self, config):
    super().__init__()
    import transformers  # pylint: disable=import-outside-toplevel
    text = dict(vocab_size=config.vocab_size, hidden_size=config.hidden_size,
                intermediate_size=config.intermediate_size, num_hidden_layers=config.num_layers,
                num_attention_heads=config.num_heads, max_position_embeddings=config.max_position,
                encoder_hidden_size=config.vision_width)
    vision = dict(hidden_size=config.vision_width, intermediate_size=config.vision_mlp,
                  num_hidden_layers=config.vision_layers,
                  num_attention_heads=config.vision_heads, image_size=config.image_size,
                  patch_size=config.patch_size, hidden_act=config.hidden_act,
                  layer_norm_eps=config.vision_eps)
    self.first = config.enc_token_id if config.first_token == "enc" else None
    self.model = transformers.BlipForImageTextRetrieval(
        transformers.BlipConfig(text_config=text, vision_config=vision))

  def encode_images(self, images):
    from scorers import pixels as pixels_lib  # pylint: disable=import-outside-toplevel
    pixel_values = _normalise(images["pixels"], pixels_lib.CLIP_MEAN, pixels_lib.CLIP_STD)
    return {"image_embeds": self.model.vision_model(pixel_values=pixel_values).last_hidden_state}

  def forward(self, ids, mask, images):
    if self.first is not None:  # BLIP's ITM: encoder_input_ids[:, 0] = enc_token_id.
      ids = ids.clone()
      ids[:, 0] = self.first
    embeds = images["image_embeds"]
    hidden = self.model.text_encoder(
        input_ids=ids, attention_mask=mask, encoder_hidden_states=embeds,
        encoder_attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long,
                                          device=embeds.device)).last_hidden_state
    logits = self.model.itm_head(hidden[:, 0]).float()
    return 100.0 * logits.softmax(dim=-1)[:, 1]


_SCORERS = {"lxmert": LxmertReference, "clip": ClipReference, "siglip": SiglipReference,
            "blip_itm": BlipItmReference}
# UNITER, ROSITA and ViLBERT have no PyTorch model in `transformers` to build a reference from.
REFERENCE_SCORERS = tuple(_SCORERS)


def device_name(device: torch.device) -> str:
  if device.type == "cuda":
    return f"{torch.cuda.get_device_name(device)} (cuda)"
  return "cpu"


def run_reference(*, scorer_name: str, scorer_config: Any, cap_config: Any, cap_params: dict,
                  words: Sequence[str], tokenizer, text_max_length: int, fc_feats: np.ndarray,
                  images: dict[str, np.ndarray], num_samples: int, max_length: int, dtype: str,
                  lr: float, grad_clip: float, warmup: int, repeats: int,
                  seed: int = 0) -> dict[str, Any]:
  """Times the reference pipeline on one batch of images; one synchronised step per repeat.

  Args:
    scorer_name: one of `REFERENCE_SCORERS`.
    scorer_config: our scorer Config (its sizes build the transformers config).
    cap_config, cap_params: the captioner sizes and the JAX params the model starts from.
    words: the captioner vocabulary (words[0] == '').
    tokenizer: the scorer's Hugging Face tokenizer; text_max_length its truncation length.
    fc_feats: [B, fc_dim] float32.
    images: per image, what the reference scorer reads: LXMERT "region_feats" [B, R, 2048],
      "region_boxes" [B, R, 4], "region_mask" [B, R]; CLIP "image_embeds" [B, D] unit norm;
      SigLIP and BLIP "pixels" [B, S, S, 3] uint8 at the model's input size.
    dtype: "bfloat16" runs the scorer under bf16 autocast; "float32" without.

  Returns:
    {"device", "tokenizer", "scorer", "autocast", "text_width" (mean padded width), "phases":
    {phase: [seconds per repeat]}} with phases decode, strings_tokenize, score, update, full.
  """
  if scorer_name not in _SCORERS:
    raise ValueError(f"vlprobe_jax/bench/torch_reference.py: no reference pipeline for scorer "
                     f"{scorer_name!r}; available: {', '.join(sorted(_SCORERS))}.")
  device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
  precision = torch.get_float32_matmul_precision()
  try:
    if device.type == "cuda":
      torch.set_float32_matmul_precision("high")  # TF32, as XLA's default on the GPU.
    return _run(scorer_name, scorer_config, cap_config, cap_params, words, tokenizer,
                text_max_length, fc_feats, images, num_samples, max_length, dtype, lr, grad_clip,
                warmup, repeats, seed, device)
  finally:
    torch.set_float32_matmul_precision(precision)
    if device.type == "cuda":
      torch.cuda.empty_cache()


def _run(scorer_name, scorer_config, cap_config, cap_params, words, tokenizer, text_max_length,
         fc_feats, images, num_samples, max_length, dtype, lr, grad_clip, warmup, repeats, seed,
         device):
  torch.manual_seed(seed)
  model = FCModel(cap_config.vocab_size, cap_config.fc_dim, cap_config.embed_size,
                  cap_config.rnn_size, cap_config.dropout)
  load_flax_params(model, cap_params)
  model.to(device)
  optimizer = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.9, 0.999), eps=1e-8)
  scorer = _SCORERS[scorer_name](scorer_config).to(device).eval()
  fc = torch.from_numpy(np.asarray(fc_feats, np.float32)).to(device)
  per_image = {k: torch.from_numpy(np.asarray(v)).to(device) for k, v in images.items()}
  num_images = fc.shape[0]
  autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16,
                            enabled=dtype == "bfloat16")
  widths = []

  def sync():
    if device.type == "cuda":
      torch.cuda.synchronize(device)

  def step() -> dict[str, float]:
    sync()
    start = time.perf_counter()
    model.eval()
    with torch.no_grad():
      greedy_seq, _ = decode(model, fc, max_length, sample=False)
    model.train()
    sample_seq, sample_logprobs = decode(model, fc.repeat_interleave(num_samples, dim=0),
                                         max_length, sample=True)
    seqs = [greedy_seq.cpu().numpy(), sample_seq.cpu().numpy()]  # Waits for the GPU.
    decoded = time.perf_counter()
    texts = ids_to_strings(seqs[0], words) + ids_to_strings(seqs[1], words)
    encoded = tokenizer(texts, padding=getattr(scorer, "padding", True), truncation=True,
                        max_length=text_max_length, return_tensors="pt")
    ids = encoded["input_ids"].to(device)
    mask = encoded["attention_mask"].to(device)
    widths.append(ids.shape[1])
    tokenized = time.perf_counter()
    with torch.no_grad(), autocast:
      # The caption-independent part once per image (SigLIP, BLIP: the vision tower).
      image_side = scorer.encode_images(per_image) if hasattr(scorer, "encode_images") else per_image
      caption_images = {k: torch.cat([v, v.repeat_interleave(num_samples, dim=0)])
                        for k, v in image_side.items()}
      scores = scorer(ids, mask, caption_images).float()
    sync()
    scored = time.perf_counter()
    greedy_scores, sample_scores = scores[:num_images], scores[num_images:]
    reward = (sample_scores.view(num_images, num_samples) - greedy_scores[:, None]).reshape(-1)
    words_mask = (sample_seq > 0).float()
    loss_mask = torch.cat([torch.ones_like(words_mask[:, :1]), words_mask[:, :-1]], dim=1)
    loss = -(sample_logprobs * reward[:, None] * loss_mask).sum() / loss_mask.sum()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_value_(model.parameters(), grad_clip)
    optimizer.step()
    sync()
    done = time.perf_counter()
    return {"decode": decoded - start, "strings_tokenize": tokenized - decoded,
            "score": scored - tokenized, "update": done - scored, "full": done - start}

  for _ in range(warmup):
    step()
  widths.clear()
  timings = [step() for _ in range(repeats)]
  result = {
      "device": device_name(device),
      "tokenizer": f"{type(tokenizer).__name__} (fast={getattr(tokenizer, 'is_fast', False)})",
      "scorer": type(scorer.model).__name__,
      "autocast": "bfloat16" if dtype == "bfloat16" else "none",
      "text_width": float(statistics.mean(widths)) if widths else 0.0,
      "phases": {phase: [t[phase] for t in timings] for phase in PHASES},
  }
  return result
