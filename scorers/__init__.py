"""VLP scorers: Flax ports of UNITER, ROSITA, ViLBERT, CLIP and LXMERT behind one contract."""

from scorers.registry import Scorer, get, names, register

__all__ = ["Scorer", "get", "names", "register"]
