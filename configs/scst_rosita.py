"""SCST with the ROSITA reward: an alias of configs/scst.py:scorer=rosita (its docstring says more).

  python launch.py --config=configs/scst_rosita.py
  python launch.py --config=configs/scst_rosita.py:runlocal
"""

import functools

from configs import common

get_config = functools.partial(common.scst_config, scorer="rosita")
