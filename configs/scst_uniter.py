"""SCST with the UNITER reward: an alias of configs/scst.py:scorer=uniter (its docstring says more).

  python launch.py --config=configs/scst_uniter.py
  python launch.py --config=configs/scst_uniter.py:runlocal
"""

import functools

from configs import common

get_config = functools.partial(common.scst_config, scorer="uniter")
