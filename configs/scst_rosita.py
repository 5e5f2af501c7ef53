"""SCST with the ROSITA (single stream, punctuation stripped; ITM head, match = softmax index 1) match score as the reward.

Command:
  python launch.py --config=configs/scst_rosita.py                 # synthetic world, no downloads
  python launch.py --config=configs/scst_rosita.py:runlocal        # seconds-long smoke run
  python launch.py --config=configs/scst_rosita.py:data=coco \
      --config.scorer_checkpoints.rosita=/path/to/checkpoint ...   # COCO, see docs/coco.md

Runs the missing stages in the workdir (default `workdir/scst_rosita`): the synthetic world, the
tiny rosita scorer pretrained on it (or the given checkpoint), XE training, SCST from the best XE
checkpoint, greedy test captions of both scored by every configured scorer with their
captioning metrics (`{xe,scst}/eval/`), and the analysis report (`analysis/report.md`).
Time on a 2-core CPU (synthetic world): about 4 minutes from scratch (LXMERT: 232 s, see
BENCHMARKS.md); about 2 minutes when its workdir already holds the data and XE stages.
"""

from configs import common


def get_config(arg=None):
  return common.scst_config(arg, "rosita")
