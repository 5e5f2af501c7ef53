"""VLP scorers: Flax ports of UNITER, ROSITA, ViLBERT, CLIP and LXMERT behind one contract."""

from scorers.registry import get, names, register

__all__ = ["get", "names", "register"]
