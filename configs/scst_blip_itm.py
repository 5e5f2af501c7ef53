"""SCST with the BLIP ITM reward: an alias of configs/scst.py:scorer=blip_itm (its docstring says more).

  python launch.py --config=configs/scst_blip_itm.py
  python launch.py --config=configs/scst_blip_itm.py:runlocal
"""

import functools

from configs import common

get_config = functools.partial(common.scst_config, scorer="blip_itm")
