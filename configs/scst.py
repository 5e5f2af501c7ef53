"""SCST with a VLP model's match score as the reward: `scorer=` one of the registered scorers.

Command:
  python launch.py --config=configs/scst.py:scorer=lxmert          # synthetic world, no downloads
  python launch.py --config=configs/scst.py:scorer=clip,runlocal   # seconds-long smoke run
  python launch.py --config=configs/scst.py:scorer=lxmert,data=coco \
      --config.scorer_checkpoints.lxmert=/path/to/checkpoint ...   # COCO, see docs/coco.md
  python launch.py --config=configs/scst_lxmert.py                 # the same, by its alias

Arguments: scorer=clip|lxmert|rosita|uniter|vilbert (default lxmert), data=synthetic|coco,
runlocal, cross_score (score the test captions with every scorer, the paper's Table 2).

Runs the missing stages in the workdir (default `workdir/scst_<scorer>`): the synthetic world,
the tiny scorer pretrained on it (or the given checkpoint), XE training, SCST from the best XE
checkpoint, greedy test captions of both scored by every configured scorer with their captioning
metrics (`{xe,scst}/eval/`), and the analysis report (`analysis/report.md`).
Time on a 2-core CPU (synthetic world): about 4 minutes from scratch for LXMERT (see
BENCHMARKS.md); about 2 minutes when the workdir already holds the data and XE stages, plus
1.5 minutes to pretrain another tiny scorer. `:runlocal` takes seconds.
"""

from configs import common


def get_config(arg=None):
  return common.scst_config(arg)
