"""SCST with the ViLBERT reward: an alias of configs/scst.py:scorer=vilbert (its docstring says more).

  python launch.py --config=configs/scst_vilbert.py
  python launch.py --config=configs/scst_vilbert.py:runlocal
"""

import functools

from configs import common

get_config = functools.partial(common.scst_config, scorer="vilbert")
