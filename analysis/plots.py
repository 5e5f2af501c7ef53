"""The paper's figures as PNG files: top unigrams (Figure 4) and the section 5 probes (2, 3).

Matplotlib with the Agg backend (no display needed). CLIP's score (100 x cosine) lives on
another scale than the ITM probabilities, so, as the paper's Figure 3 does after Hessel et al.
2021, score plots multiply it by 2.5 and say so in the legend (`scale=` changes that).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position

DEFAULT_SCALE = {"clip": 2.5}
# Bar colours of the unigram plots, by the word's most frequent POS.
_POS_COLOURS = {"NOUN": "tab:blue", "VERB": "tab:red", "ADP": "tab:orange", "DET": "tab:gray",
                "ADJ": "tab:green", "CCONJ": "tab:purple", "AUX": "tab:brown"}
_OTHER_COLOUR = "tab:olive"


def _label(name: str, scale: Mapping[str, float]) -> str:
  factor = scale.get(name.lower(), 1.0)
  return f"{name} (x{factor:g})" if factor != 1.0 else name


def plot_top_unigrams(unigrams: Mapping[str, Sequence[Mapping]], path: str) -> str:
  """One horizontal bar panel per run: its top words by share of all words, coloured by POS.

  Args:
    unigrams: run name -> [{"word", "share", "pos"}] as from `analysis.pos.top_unigrams`.
    path: the PNG to write.
  """
  names = list(unigrams)
  cols = min(3, max(1, len(names)))
  rows = math.ceil(len(names) / cols)
  fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.6 * rows), squeeze=False)
  used = {}
  for ax, name in zip(axes.flat, names):
    top = list(unigrams[name])[::-1]  # largest at the top
    colours = [_POS_COLOURS.get(u["pos"], _OTHER_COLOUR) for u in top]
    ax.barh([u["word"] for u in top], [100.0 * u["share"] for u in top], color=colours)
    for u, c in zip(top, colours):
      used.setdefault(u["pos"] if u["pos"] in _POS_COLOURS else "other", c)
    ax.set_title(f"Top-{len(top)} unigrams: {name}")
    ax.set_xlabel("share of all words (%)")
    ax.set_ylabel("word")
  for ax in list(axes.flat)[len(names):]:
    ax.axis("off")
  handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in used.values()]
  fig.legend(handles, list(used), title="POS", loc="lower right", fontsize="small")
  fig.tight_layout(rect=(0, 0, 0.93, 1))
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def plot_replacement(probe: Mapping, path: str,
                     scale: Mapping[str, float] = DEFAULT_SCALE) -> str:
  """Figure 2: per scorer, mean score of the XE captions and of their two corruptions."""
  scores = probe["scores"]
  names = list(scores)
  kinds = (("original", "XE captions", "tab:blue"),
           ("replace_others", "other words replaced", "tab:green"),
           ("replace_nouns", "visual words (nouns) replaced", "tab:red"))
  width = 0.8 / len(kinds)
  fig, ax = plt.subplots(figsize=(max(6.5, 1.6 * len(names) + 2), 4.4))
  for j, (key, label, colour) in enumerate(kinds):
    xs = [i + (j - 1) * width for i in range(len(names))]
    ys = [scores[n][key] * scale.get(n.lower(), 1.0) for n in names]
    bars = ax.bar(xs, ys, width, label=label, color=colour)
    ax.bar_label(bars, fmt="%.1f", fontsize="x-small", padding=1)  # a drop to 0 stays visible
  ax.set_xticks(range(len(names)), [_label(n, scale) for n in names])
  ax.set_xlabel("scorer")
  ax.set_ylabel("mean match score")
  ax.set_title(f"Scores of XE captions and corrupted versions ({probe['num_captions']} captions)")
  ax.margins(y=0.12)
  ax.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=3)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def plot_visual_words(probe: Mapping, path: str,
                      scale: Mapping[str, float] = DEFAULT_SCALE) -> str:
  """Figure 3: mean score of template captions against the number k of visual words."""
  fig, ax = plt.subplots(figsize=(5.5, 4.0))
  for name, values in probe["scores"].items():
    factor = scale.get(name.lower(), 1.0)
    ax.plot(probe["k"], [v * factor for v in values], marker="o", label=_label(name, scale))
  ax.set_xticks(probe["k"])
  ax.set_xlabel("number of visual words k")
  ax.set_ylabel("mean match score")
  ax.set_title(f"Score vs visual words ({probe['num_images']} images)")
  ax.legend(fontsize="small")
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path
