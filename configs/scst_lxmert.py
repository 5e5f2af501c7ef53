"""SCST with the LXMERT reward: an alias of configs/scst.py:scorer=lxmert (its docstring says more).

  python launch.py --config=configs/scst_lxmert.py
  python launch.py --config=configs/scst_lxmert.py:runlocal
"""

import functools

from configs import common

get_config = functools.partial(common.scst_config, scorer="lxmert")
