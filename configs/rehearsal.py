"""The real run, rehearsed offline: COCO scale, full-size checkpoints in their original formats.

Command:
  python launch.py --config=configs/rehearsal.py                      # a tenth of COCO
  python launch.py --config=configs/rehearsal.py:scale=1.0,regions=0.1    # the record run
  python launch.py --config=configs/rehearsal.py:parts=world+stores   # some parts only
  python launch.py --config=configs/rehearsal.py:runlocal             # CI smoke (300 images)
  python launch.py --config=configs/rehearsal.py --config.data_dir=/big/disk/rehearsal

Arguments: scale (fraction of COCO's 123,287 images, default 0.1), regions (fraction of those
images that get obj36 regions, default 1.0: the full-size TSVs are 48 GB and their float16
store 18 GB), parts (`+`-separated, default world+stores+checkpoints+pipeline+run), runlocal.

Produces, under `data_dir` (default ~/vlprobe-rehearsal, outside the repository; its size is
`scale`): a Karpathy-format `dataset_coco.json` (Zipf-like words: the count > 5 rule keeps
`world.target_vocab` words), self-critical fc `.npy` files and LXMERT obj36 TSVs with random
features, the fc and region stores built from them by the project's builders, full-size random
checkpoints in every released format (LXMERT HF directory and airsplay `.pth`, CLIP ViT-B/32 HF
directory, UNITER-base `.pt`, ROSITA-base `.pkl`, ViLBERT-base `.bin`), and a `data=coco` XE +
SCST run with the LXMERT reward (512-unit LSTM, LXMERT base) killed and resumed; then
`rehearsal.json` (every number) and `rehearsal.md` (the table docs/coco.md carries).
Time on a 2-core CPU (measured 2026-11-30): the tenth 20 minutes and 15 GB (world 1.8 min,
stores 4.3 min, checkpoints 7.8 min, pipeline 0.5 min, the run 5.8 min); the record
(scale=1.0, regions=0.1) about 1.5 hours and 25 GB of disk (estimated, not run here).
`runlocal` takes about 20 s (world, stores and pipeline at 300 images; no checkpoints, no run).
"""

import ml_collections

from configs import common


def get_config(arg=None):
  args = common.parse_arg(arg, scale=0.1, regions=1.0, runlocal=False,
                          parts="world+stores+checkpoints+pipeline+run")
  config = ml_collections.ConfigDict()
  config.entry = "rehearsal"
  config.seed = 0
  config.data_dir = "~/vlprobe-rehearsal"
  config.out_json = "rehearsal.json"
  config.parts = tuple(p for p in args.parts.split("+") if p)
  config.world = ml_collections.ConfigDict(dict(
      scale=args.scale, regions_fraction=args.regions, captions_per_image=5,
      # self-critical's 9,487 words are 9,486 kept words + UNK.
      target_vocab=9486, count_threshold=5, num_word_types=30000, multi_piece_fraction=0.08))
  config.stores = ml_collections.ConfigDict(dict(region_dtypes=("float16", "float32")))
  config.checkpoints = ml_collections.ConfigDict(dict(
      formats=("lxmert_hf", "lxmert_lxrt", "clip_hf", "uniter", "rosita", "vilbert"),
      size="base", parity=True, rewrite=False))
  # The SCST step on a GPU reads 50 images per device; threads > 1 adds producer threads.
  config.pipeline = ml_collections.ConfigDict(dict(batch_size=50, steps=40, prefetch=2,
                                                   threads=(1, 2), cold=True))
  config.run = ml_collections.ConfigDict(dict(
      scorer="lxmert", checkpoint_format="lxmert_lxrt", region_dtype="float16",
      stages=("data", "scorers", "xe", "scst", "eval"), rnn_size=512, images_per_batch=10,
      xe_steps=4, scst_steps=6, kill_after_step=3, checkpoint_every_steps=2,
      eval_batch_size=100, timeout_s=7200.0))
  config.multihost = False
  if args.runlocal:
    config.data_dir = "~/vlprobe-rehearsal-runlocal"
    config.world.update(scale=0.0025, target_vocab=300, num_word_types=2000)
    config.pipeline.update(batch_size=8, steps=6, threads=(1, 2))
    config.parts = tuple(p for p in config.parts if p in ("world", "stores", "pipeline"))
  return config
