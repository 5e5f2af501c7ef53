"""SCST with the CLIP reward: an alias of configs/scst.py:scorer=clip (its docstring says more).

  python launch.py --config=configs/scst_clip.py
  python launch.py --config=configs/scst_clip.py:runlocal
"""

import functools

from configs import common

get_config = functools.partial(common.scst_config, scorer="clip")
