"""Cross-entropy training of the FC-LSTM captioner.

Command:
  python launch.py --config=configs/xe_fc.py                 # synthetic world (default)
  python launch.py --config=configs/xe_fc.py:data=coco ...   # COCO Karpathy split (docs/coco.md)
  python launch.py --config=configs/xe_fc.py:runlocal        # seconds-long smoke run

Produces, in the workdir (default `workdir/xe_fc`): `xe/checkpoints/{latest,best}` (orbax),
`xe/metrics.jsonl` + TensorBoard logs, `xe/eval/test_captions.json` and `xe/eval/metrics.json`.
Time: about a minute on a 2-core CPU on the synthetic world (plus 12 s to make the world); the
paper's 30 epochs on COCO take hours on one GPU.
"""

from configs import common


def get_config(arg=None):
  config, args = common.base_config(arg)
  config.workdir = f"workdir/xe_fc{'_coco' if args.data == 'coco' else ''}"
  config.stages = ("data", "xe", "eval")
  config.scorers = ()  # scorers that score the test captions; none for plain XE
  if args.runlocal:
    common.apply_runlocal(config)
    config.workdir += "_runlocal"
  return config
