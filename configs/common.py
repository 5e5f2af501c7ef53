"""The blocks the config files share, and the parsing of their arguments.

Config files are `get_config(arg)` functions. `arg` is the text after the colon in
`--config=configs/scst.py:scorer=clip,data=coco,runlocal`: comma-separated `key=value` pairs, or
bare `key` for True. Any field can then be overridden on the command line
(`--config.scst.lr=1e-5`); `python launch.py --config=<file> --show_config` lists every field.
Every config names its entry point in `entry` ("stages", "analysis", "bench_reward"); launch.py
checks it with `vlprobe_jax.validation.validate` before anything runs.
"""

from __future__ import annotations

import ml_collections

import scorers


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """'data=coco,runlocal' -> ConfigDict(data='coco', runlocal=True), typed by `defaults`.

  Raises:
    ValueError: an unknown key (the message lists the known ones) or a value of the wrong type.
  """
  out = ml_collections.ConfigDict(defaults)
  for item in filter(None, (arg or "").split(",")):
    key, has_value, value = item.partition("=")
    key = key.strip()
    if key not in defaults:
      raise ValueError(f"Unknown config argument {key!r} in {arg!r}. Known arguments: "
                       f"{', '.join(sorted(defaults)) or 'none'}.")
    default = defaults[key]
    if not has_value:  # bare key: a flag
      value = "True"
    try:
      if isinstance(default, bool):
        if value.lower() not in ("true", "false", "1", "0"):
          raise ValueError(value)
        out[key] = value.lower() in ("true", "1")
      elif isinstance(default, int):
        out[key] = int(value)
      elif isinstance(default, float):
        out[key] = float(value)
      else:
        out[key] = value
    except ValueError as error:
      raise ValueError(f"Config argument {key}={value!r}: expected a "
                       f"{type(default).__name__} like {default!r}.") from error
  return out


def captioner_block(data: str) -> ml_collections.ConfigDict:
  """self-critical.pytorch NewFCModel sizes (vocab_size comes from the data).

  The synthetic world's 70-word language needs far less than 512 units, and a 512-unit LSTM
  makes XE take many minutes on a 2-core CPU; the same cell runs there at 128 units.
  """
  size = 128 if data == "synthetic" else 512
  return ml_collections.ConfigDict(dict(fc_dim=2048, embed_size=size, rnn_size=size,
                                        dropout=0.5, dtype="float32"))


def xe_block(data: str) -> ml_collections.ConfigDict:
  """The paper's XE schedule on COCO; a shorter one on the synthetic world."""
  xe = ml_collections.ConfigDict(dict(
      lr=5e-4, lr_decay_every_epochs=3, lr_decay_rate=0.8, grad_clip=0.1,
      images_per_batch=10, epochs=30, total_steps=0,
      ss_start_epoch=0, ss_increase_every_epochs=5, ss_increase_prob=0.05, ss_max_prob=0.25,
      log_every_steps=100, eval_every_steps=3000, checkpoint_every_steps=1000,
      keep_checkpoints=2, init_from=""))
  if data == "synthetic":
    xe.update(images_per_batch=20, epochs=8, lr_decay_every_epochs=2,
              ss_increase_every_epochs=2, log_every_steps=50, eval_every_steps=400,
              checkpoint_every_steps=200)
  return xe


def eval_block(data: str) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      method="greedy", beam_size=3, max_length=16 if data == "synthetic" else 20,
      batch_size=250, suppress_unk=True, spice_dir="", meteor=True))


def data_block(data: str) -> ml_collections.ConfigDict:
  """`data=synthetic` (the embedded world, no downloads) or `data=coco` (paths to fill in)."""
  if data == "synthetic":
    from vlprobe_jax.data import synthetic  # pylint: disable=g-import-not-at-top
    return ml_collections.ConfigDict(dict(name="synthetic", world=synthetic.default_world_config(),
                                          cache_dir=""))
  if data == "coco":
    return ml_collections.ConfigDict(dict(
        name="coco", source="karpathy_json", karpathy_json="", image_dir="", tfds_data_dir="",
        tfds_name="coco_captions/2014", fc_store="", region_store="", clip_store="", pixel_store="",
        count_threshold=5, max_length=16, captions_per_image=5, vocab_from="all",
        vocab_json="", image_size=0, on_error="stop", max_images=0))
  raise ValueError(f"data must be 'synthetic' or 'coco'; found {data!r}.")


def base_config(arg: str | None, **extra_args) -> tuple[ml_collections.ConfigDict,
                                                         ml_collections.ConfigDict]:
  """The blocks every training run has (entry point "stages"). Returns (config, parsed arg)."""
  args = parse_arg(arg, data="synthetic", runlocal=False, **extra_args)
  config = ml_collections.ConfigDict()
  config.entry = "stages"
  config.seed = 0
  config.workdir = ""
  config.data = data_block(args.data)
  config.captioner = captioner_block(args.data)
  config.xe = xe_block(args.data)
  config.eval = eval_block(args.data)
  config.multihost = False
  # True continues a workdir whose recorded config differs in fields that affect results (the
  # change is recorded in its config_history.jsonl); see vlprobe_jax/run_record.py.
  config.accept_config_change = False
  return config, args


def apply_runlocal(config: ml_collections.ConfigDict) -> None:
  """A seconds-long smoke run: tiny world, a few steps, small batches."""
  if config.data.name == "synthetic":
    config.data.world.update(num_train=60, num_val=20, num_test=20)
  config.xe.update(epochs=1, total_steps=6, images_per_batch=4, log_every_steps=2,
                   eval_every_steps=6, checkpoint_every_steps=3)
  config.eval.update(batch_size=20, meteor=False)


def scorer_pretrain_block() -> ml_collections.ConfigDict:
  """Pretraining of the tiny scorers on the synthetic world (vlprobe_jax/scorer_pretrain.py).

  Fields (each scorer reads these, updated by its entry in `per_scorer`):
    steps, batch_size, lr, warmup_steps, end_lr_fraction: AdamW with linear warmup and cosine
      decay to lr * end_lr_fraction; weight_decay (kernels and embeddings only), grad_clip.
    init_std: > 0 re-initialises the model BERT-style (N(0, init_std) kernels and embeddings);
      0 keeps the module's own initialisers.
    feature_norm: standardise region features per dimension during training (folded into the
      first layer afterwards, so the saved scorer reads raw features).
    dropout_rate: >= 0 replaces the tiny config's dropout; -1 keeps it.
    negatives: ITM batch fractions of each negative kind ("random": another image's caption,
      "related": a caption of an image with the same background or a same-coloured shape,
      "swap": the image's caption with one colour/shape/size word swapped); the rest are
      positives.
    max_text_len: > 0 replaces the tokenizer truncation length.
    model: scorer Config field overrides (e.g. hidden_size), usually set per scorer.
    log_every_steps, checkpoint_every_steps: cadence (an interrupted pretraining resumes).
    per_scorer.<name>: overrides of any field above for one scorer.
  """
  return ml_collections.ConfigDict(dict(
      steps=2000, batch_size=64, lr=1e-3, warmup_steps=100, end_lr_fraction=0.0,
      weight_decay=0.01, grad_clip=1.0, init_std=0.0, feature_norm="standard", dropout_rate=0.0,
      negatives=dict(random=0.5, related=0.25, swap=0.25), paired=True,
      seed=0, log_every_steps=200, checkpoint_every_steps=500, max_text_len=0, model={},
      per_scorer=dict(
          lxmert={}, uniter={}, rosita={},
          # Half of tiny CLIP's MLP width: 0.52 retrieval accuracy instead of 0.55, 2/3 the time.
          clip=dict(model=dict(text_mlp=128, vision_mlp=128)),
          # Two text layers instead of four (co-attention after each): 0.89 val accuracy in 2/3
          # of the time (four layers: 0.93 after 2,400 steps).
          vilbert=dict(lr=5e-4, model=dict(num_hidden_layers=2, t_biattention_id=(1, 2))),
          # Pixels only: no region-feature layer to fold a feature normalisation into.
          siglip={},
          blip_itm=dict(feature_norm="none"))))


def scst_block(data: str, scorer: str) -> ml_collections.ConfigDict:
  """The paper's SCST settings on COCO (lr 5e-5, 5 samples, greedy baseline, 20 epochs).

  `max_length` on COCO is 20, self-critical.pytorch's `seq_length` (`opt.max_length`, default
  20, which `configs/fc_rl.yml` keeps; only the XE labels are cut at 16 by prepro): the paper's
  SCST captions average 19.0-20.0 words (its Table 4), running into that cap.
  """
  scst = ml_collections.ConfigDict(dict(
      scorer=scorer, lr=5e-5, grad_clip=0.1, num_samples=5, baseline="greedy",
      images_per_batch=10, epochs=20, total_steps=0, max_length=20, temperature=1.0,
      log_every_steps=100, eval_every_steps=3000, checkpoint_every_steps=1000,
      keep_checkpoints=2,
      # False on COCO: image inputs of 113k images do not fit in host memory, so the step
      # computes them (once per image, not per caption) from the stored regions / pixels.
      cache_image_inputs=data == "synthetic",
      # The policy gradient's log-probs: "sampling" (kept from the sampling pass, one forward
      # fewer) or "replay" (a teacher-forced second pass over the samples). Equal log-probs,
      # loss and gradients (tests/test_scst.py); on the synthetic world 3 seeds x 600 steps
      # ended with identical scores either way, and "sampling" ran the full step 1.6x faster on
      # the 2-core CPU (BENCHMARKS.md).
      policy_gradient="sampling"))
  if data == "synthetic":
    # 600 steps on a CPU: a larger step size than the paper's so the change shows in minutes,
    # and 12 samples with the mean-of-the-other-samples baseline (new self-critical;
    # `baseline=greedy` with 5 samples is the paper's), whose advantages are far less noisy
    # than a single greedy caption's over so few steps. Measured on the LXMERT reward (test
    # score after XE 14.0, 2,000-step tiny scorer): mean baseline, lr 2e-4, 600 steps, 5 samples
    # 16.0, 8 samples 21.9, 12 samples 25.4 (8 samples for 1,000 steps 25.7); 5 samples at
    # lr 1e-4 16.9, at lr 5e-4 11.1. With the 600-step scorer the greedy baseline (lr 1e-4)
    # gained 2 points where the mean baseline gained 11. The world's captions are at most 16
    # words, so SCST samples up to 16.
    scst.update(lr=2e-4, epochs=0, total_steps=600, baseline="mean", num_samples=12,
                images_per_batch=16, log_every_steps=50, eval_every_steps=100,
                checkpoint_every_steps=100, max_length=16)
  return scst


def analysis_block() -> ml_collections.ConfigDict:
  """The analysis settings (analysis/report.py), shared by configs/analysis.py and the
  "analysis" stage of a training run."""
  config = ml_collections.ConfigDict()
  config.seed = 0  # the probes' random seed
  config.reference = "XE"  # the Table 2 row others are compared with
  config.include_meteor = True
  config.spice_dir = ""  # a folder with the two Stanford CoreNLP 3.6.0 jars (else no SPICE)
  config.ptb_tokenize = False
  config.recompute_metrics = False  # True: ignore metrics.json, recompute from the captions
  config.bad_captions = "refuse"  # or "skip": a null or empty caption (analysis/text.py)
  config.tokenizer = "auto"  # how captions from files are tokenized: "auto", "ptb" or "lower"
  config.java_timeout_s = 300.0  # the longest one Java call (PTB, METEOR, SPICE) may take
  config.top_k = 10
  # See analysis/lm.py: nltk's KneserNeyInterpolated, fixed discount, rare words as <UNK>.
  config.lm = ml_collections.ConfigDict(dict(order=3, discount=0.75, unk_cutoff=2))
  config.probes = ml_collections.ConfigDict()
  config.probes.enabled = True
  config.probes.run = ""  # default: the reference run
  config.probes.k_values = (3, 4, 5, 6, 7)
  config.probes.max_images = 0  # 0: every eligible image
  return config


def scst_config(arg: str | None = None, scorer: str | None = None) -> ml_collections.ConfigDict:
  """An SCST run (configs/scst.py); `scorer` fixes the reward (the scst_<name>.py aliases)."""
  # cross_score: score the test captions with every scorer (Table 2); on the synthetic world that
  # pretrains all five tiny scorers, so it is off by default (configs/analysis.py can cross-score
  # finished runs with the scorers their workdirs already hold).
  extra = {"cross_score": False} if scorer else {"cross_score": False, "scorer": "lxmert"}
  config, args = base_config(arg, **extra)
  scorer = scorer or args.scorer
  if scorer not in scorers.names():
    raise ValueError(f"configs/scst.py: scorer={scorer!r}; known scorers: "
                     f"{', '.join(scorers.names())}.")
  config.workdir = f"workdir/scst_{scorer}{'_coco' if args.data == 'coco' else ''}"
  config.stages = ("data", "scorers", "xe", "scst", "eval", "analysis")
  config.scst = scst_block(args.data, scorer)
  # Scorers that also score the test captions (the paper's Table 2 cross-scoring).
  config.scorers = tuple(scorers.names()) if args.cross_score else (scorer,)
  config.scorer_checkpoints = ml_collections.ConfigDict({name: "" for name in scorers.names()})
  config.scorer_pretrain = scorer_pretrain_block()
  config.scorer_dtype = ""  # "" keeps each scorer's own; "bfloat16" for speed
  # "exact" (the originals' erf GELU) or "tanh" (faster on a GPU, changes the scores slightly;
  # BENCHMARKS.md); for the BERT-style scorers (LXMERT, UNITER, ROSITA, ViLBERT).
  config.scorer_gelu = "exact"
  config.trust_pickle = False  # allow full unpickling of .pkl/.pt checkpoints you trust
  config.analysis = analysis_block()
  if args.runlocal:
    apply_runlocal(config)
    config.scst.update(total_steps=4, images_per_batch=4, log_every_steps=2, eval_every_steps=4,
                       checkpoint_every_steps=2)
    config.scorer_pretrain.update(steps=4, batch_size=8, log_every_steps=2)
    config.scorers = (scorer,)
    config.workdir += "_runlocal"
  return config
