"""Reward throughput: the compiled SCST step against the reference PyTorch pipeline.

Command:
  python launch.py --config=configs/bench_reward.py:scorer=lxmert
  python launch.py --config=configs/bench_reward.py:scorer=clip
  python launch.py --config=configs/bench_reward.py:scorer=uniter   # also rosita, vilbert
  python launch.py --config=configs/bench_reward.py:scorer=lxmert \
      --config.images_per_batch=1000 --config.profile_dir=/tmp/prof_lxmert  # BENCHMARKS.md
  python launch.py --config=configs/bench_reward.py:scorer=lxmert,runlocal   # CPU smoke test

At the real sizes with random weights (FC-LSTM: 9,488 logits, 512 wide, 2048-d features; LXMERT
base, UNITER-base, ROSITA-base, ViLBERT on 36 regions x 2048; CLIP ViT-B/32 text tower on cached
unit image embeddings), for each
batch of `images_per_batch` images x (num_samples + 1 greedy) captions it prints a table of
captions/s, images/s and ms/step for:
  jax:   the full compiled SCST step (decode greedy + K samples, re-tokenize, score, update), fed
         by the BatchIterator from host arrays (region scorers: raw regions, image inputs
         computed in the step as on COCO, unless cache_image_inputs); decode only; re-tokenize + score; score on
         pre-tokenized ids; the image side (once per image); XLA compile times separately; data
         wait per step against step time;
  torch: the reference pipeline (FC model with a Python decode loop, ids -> strings on the CPU,
         Hugging Face fast tokenizer, PyTorch scorer, reward, backward, Adam) with its parts,
         when torch is importable and `reference` is True; LXMERT and CLIP only (transformers
         has no UNITER, ROSITA or ViLBERT model to build one from);
and the jax / torch ratios (the reference runs at every batch size by default, so each ratio
compares the same work), the text widths the reward's length groups were scored at, the
device, the dtypes, the software versions, and how much the scores change between float32 and
bfloat16 and between the exact and the tanh GELU (vlprobe_jax/bench/checks.py). `variants`
times the full step again under other settings (attention kernel, GELU, length groups, the
policy gradient's pass, captioner dtype), each against the first row. The summary is also
written as JSON to `out_json` (under the workdir, default `workdir/bench_<scorer>/bench.json`).
Timings: warm-up excluded, median over `repeats` of `steps_per_repeat` back-to-back steps.
`profile_dir` writes a JAX profiler trace of `profile_steps` full steps there (off by default)
and prints where the device time went: busy fraction, kernel time by phase of the step, top
kernels (vlprobe_jax/bench/profile.py).

Time on one H200: about 2 minutes per scorer and batch size (mostly compilation, about 30 s
for the full step and as much for the parts, and the PyTorch reference); each further batch
size recompiles, and each variant adds about 40 s. The `runlocal` smoke
test (tiny sizes) takes under a minute on a 2-core CPU; the real sizes on a CPU take minutes and
are only a check that everything runs.
"""

import os

import ml_collections

import scorers
from configs import common


def get_config(arg=None):
  args = common.parse_arg(arg, scorer="lxmert", runlocal=False)
  if args.scorer not in scorers.names():
    raise ValueError(f"configs/bench_reward.py: scorer={args.scorer!r}; the benchmark supports "
                     f"{', '.join(scorers.names())}.")
  # JAX reserves 75% of the GPU at start-up (launch.py starts it right after parsing this
  # config); the PyTorch reference in the same process needs memory too. Only read at start-up.
  os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

  config = ml_collections.ConfigDict()
  config.entry = "bench_reward"
  config.workdir = f"workdir/bench_{args.scorer}"
  config.seed = 0
  config.scorer = args.scorer
  config.scorer_size = "default"  # "default" (the released sizes) or "tiny"
  # Optional real weights (scorers/<name>.py `load` formats): the bf16-vs-fp32 score check means
  # more with them; random weights give near-constant LXMERT scores.
  config.scorer_checkpoint = ""
  config.dtype = "auto"  # scorer compute: "auto" = bfloat16 on GPU/TPU, float32 on CPU
  # A comma-separated list sweeps sizes; the reference runs at every one of them (see
  # reference_images), so each jax/torch ratio compares the same work.
  config.images_per_batch = "250,1000"
  config.num_samples = 5  # K samples per image, plus one greedy caption
  config.max_length = 16
  config.baseline = "greedy"
  config.lr = 5e-5
  config.grad_clip = 0.1
  # The paper's FC-LSTM (self-critical.pytorch NewFCModel), whatever the synthetic world uses.
  config.captioner = ml_collections.ConfigDict(dict(fc_dim=2048, embed_size=512, rnn_size=512,
                                                    dropout=0.5, dtype="float32"))
  # Captioner vocabulary: whole words of bert-base-uncased, a share of them compounds that
  # split into several WordPieces / BPE tokens, then 'UNK' (9,487 words = 9,488 logits).
  config.vocab_words = 9487
  config.multi_piece_fraction = 0.08
  config.warmup = 2
  config.repeats = 5
  config.steps_per_repeat = 10
  config.pool_batches = 4  # distinct images in the host pool = pool_batches x batch
  # Region scorers: False feeds raw regions (36 x 2048) and the step computes the image inputs,
  # as SCST on COCO does (scst.cache_image_inputs=False); True feeds cached inputs. CLIP always
  # gets cached image embeddings.
  config.cache_image_inputs = False
  config.prefetch = 2
  config.reference = True  # also run the PyTorch reference pipeline when torch is importable
  config.reference_repeats = 5
  # "" = at every batch size (the default: ratios of equal work); a list such as "250" skips
  # the others, whose rows then show no ratio.
  config.reference_images = ""
  config.dtype_check = True  # bf16-vs-fp32 scores, at the first batch size
  # Tanh-vs-exact GELU scores of the same captions, at the first batch size (BERT-style scorers;
  # CLIP's quick_gelu has no erf).
  config.gelu_check = True
  # The step's kernels and options (scorers/layers.py `options`, vlprobe_jax/scoring.py,
  # vlprobe_jax/scst.py): attention "auto" (cuDNN's fused kernel on a GPU where it can run),
  # "xla" or "cudnn"; scorer GELU "exact" or "tanh"; the reward's length groups (1 = the batch's
  # longest width for all); the policy gradient's log-probs "replay" or "sampling".
  config.attention = "auto"
  config.gelu = "exact"
  config.length_groups = 8
  config.policy_gradient = "sampling"  # the SCST default; "replay" as a variant
  # Full-step timings of other settings in the same run, against the row above: ';'-separated
  # 'field=value' changes of the fields just above or captioner_dtype, e.g.
  # "attention=xla;gelu=tanh;length_groups=1;policy_gradient=replay;captioner_dtype=bfloat16".
  # Each costs one more compilation of the full step.
  config.variants = ""
  config.profile_dir = ""
  config.profile_steps = 3
  config.out_json = "bench.json"  # relative paths are under the workdir
  config.multihost = False

  if args.runlocal:
    config.scorer_size = "tiny"
    config.images_per_batch = "4"
    config.num_samples = 2
    config.max_length = 8
    config.captioner.update(fc_dim=64, embed_size=32, rnn_size=32)
    config.vocab_words = 199
    config.warmup = 1
    config.repeats = 2
    config.steps_per_repeat = 2
    config.pool_batches = 2
    config.reference_repeats = 2
    config.profile_steps = 1
    config.workdir += "_runlocal"
  return config
