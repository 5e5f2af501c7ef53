"""SCST with the SigLIP reward: an alias of configs/scst.py:scorer=siglip (its docstring says more).

  python launch.py --config=configs/scst_siglip.py
  python launch.py --config=configs/scst_siglip.py:runlocal
"""

import functools

from configs import common

get_config = functools.partial(common.scst_config, scorer="siglip")
