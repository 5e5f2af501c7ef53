"""The paper's figures as PNG files: top unigrams (Figure 4) and the section 5 probes (2, 3).

Matplotlib with the Agg backend (no display needed). Figures are drawn so they cannot mislead:

* panels meant to be compared share their scales (every unigram panel has the same x axis);
* score axes start at zero (bars always do; line plots have their y axis from 0);
* every mean is drawn with its spread (error bars: +-1 standard deviation over the captions)
  and its count (n captions per bar or per k).

CLIP's score (100 x cosine) lives on another scale than the ITM probabilities, so, as the
paper's Figure 3 does after Hessel et al. 2021, score plots multiply it by 2.5 and say so in the
legend (`scale=` changes that).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position

DEFAULT_SCALE = {"clip": 2.5}
# Bar colours of the unigram plots, by the word's most frequent POS.
_POS_COLOURS = {"NOUN": "tab:blue", "NOUN (position)": "lightsteelblue", "VERB": "tab:red",
                "ADP": "tab:orange", "DET": "tab:gray", "ADJ": "tab:green",
                "CCONJ": "tab:purple", "AUX": "tab:brown"}
_OTHER_COLOUR = "tab:olive"


def _label(name: str, scale: Mapping[str, float]) -> str:
  factor = scale.get(name.lower(), 1.0)
  return f"{name} (x{factor:g})" if factor != 1.0 else name


def unigram_label(unigram: Mapping) -> str:
  """The POS shown for a top unigram: its most frequent tag, "NOUN (position)" for position
  words tagged NOUN (see `analysis.pos`)."""
  return "NOUN (position)" if unigram.get("position") else unigram["pos"]


def _save(fig, path: str) -> str:
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def unigram_figure(unigrams: Mapping[str, Sequence[Mapping]],
                   num_captions: Mapping[str, int] | None = None):
  """One horizontal bar panel per run: its top words by share of all words, coloured by POS.

  Every panel has the same x axis (0 to the largest share of any run), so bars can be compared
  across panels.

  Args:
    unigrams: run name -> [{"word", "share", "pos", "position"}] as from
      `analysis.pos.top_unigrams`.
    num_captions: run name -> how many captions its counts come from (shown in the titles).

  Returns:
    The matplotlib figure (the caller saves and closes it).
  """
  names = list(unigrams)
  cols = min(3, max(1, len(names)))
  rows = math.ceil(len(names) / cols)
  fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.6 * rows), squeeze=False,
                           sharex=True)
  largest = max([100.0 * u["share"] for top in unigrams.values() for u in top] + [1.0])
  used = {}
  for ax, name in zip(axes.flat, names):
    top = list(unigrams[name])[::-1]  # largest at the top
    labels = [unigram_label(u) for u in top]
    colours = [_POS_COLOURS.get(label, _OTHER_COLOUR) for label in labels]
    ax.barh([u["word"] for u in top], [100.0 * u["share"] for u in top], color=colours)
    for label, c in zip(labels, colours):
      used.setdefault(label if label in _POS_COLOURS else "other", c)
    count = f", {num_captions[name]} captions" if num_captions and name in num_captions else ""
    ax.set_title(f"Top-{len(top)} unigrams: {name}{count}", fontsize="medium")
    ax.set_xlim(0.0, 1.08 * largest)
    ax.set_xlabel("share of all words (%)")
    ax.tick_params(axis="x", labelbottom=True)
  for ax in list(axes.flat)[len(names):]:
    ax.axis("off")
  handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in used.values()]
  fig.legend(handles, list(used), title="POS", loc="lower right", fontsize="small")
  fig.tight_layout(rect=(0, 0, 0.88, 1))
  return fig


def plot_top_unigrams(unigrams: Mapping[str, Sequence[Mapping]], path: str,
                      num_captions: Mapping[str, int] | None = None) -> str:
  """Figure 4 (see `unigram_figure`) written to `path`."""
  return _save(unigram_figure(unigrams, num_captions), path)


def replacement_figure(probe: Mapping, scale: Mapping[str, float] = DEFAULT_SCALE):
  """Figure 2: per scorer, mean score (+-1 std) of the captions and of their two corruptions."""
  spread = probe.get("spread") or {
      n: {k: {"mean": v, "std": 0.0, "n": probe["num_captions"]} for k, v in s.items()}
      for n, s in probe["scores"].items()}
  names = list(spread)
  kinds = (("original", "captions as they are", "tab:blue"),
           ("replace_others", "other words replaced", "tab:green"),
           ("replace_nouns", "visual words replaced", "tab:red"))
  width = 0.8 / len(kinds)
  fig, ax = plt.subplots(figsize=(max(6.5, 1.6 * len(names) + 2), 4.4))
  for j, (key, label, colour) in enumerate(kinds):
    xs = [i + (j - 1) * width for i in range(len(names))]
    factors = [scale.get(n.lower(), 1.0) for n in names]
    ys = [spread[n][key]["mean"] * f for n, f in zip(names, factors)]
    errs = [spread[n][key]["std"] * f for n, f in zip(names, factors)]
    bars = ax.bar(xs, ys, width, yerr=errs, capsize=2, label=label, color=colour,
                  error_kw={"elinewidth": 0.8})
    ax.bar_label(bars, fmt="%.1f", fontsize="x-small", padding=1)  # a drop to 0 stays visible
  ax.set_xticks(range(len(names)), [_label(n, scale) for n in names])
  ax.set_xlabel("scorer")
  ax.set_ylabel("mean match score (bars: +-1 std)")
  ax.set_ylim(bottom=0.0)
  ax.set_title(f"Captions and their corruptions (n = {probe['num_captions']} captions per bar)")
  ax.margins(y=0.12)
  ax.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=3)
  fig.tight_layout()
  return fig


def plot_replacement(probe: Mapping, path: str,
                     scale: Mapping[str, float] = DEFAULT_SCALE) -> str:
  """Figure 2 (see `replacement_figure`) written to `path`."""
  return _save(replacement_figure(probe, scale), path)


def visual_words_figure(probe: Mapping, scale: Mapping[str, float] = DEFAULT_SCALE):
  """Figure 3: mean score (+-1 std) of generated template captions against k visual words.

  The y axis starts at 0; each image's first reference caption is drawn as a dashed line of
  the scorer's colour, for scale.
  """
  fig, ax = plt.subplots(figsize=(6.0, 4.4))
  ks = probe["k"]
  for name, values in probe["scores"].items():
    factor = scale.get(name.lower(), 1.0)
    std = probe.get("std", {}).get(name, [0.0] * len(values))
    line = ax.errorbar(ks, [v * factor for v in values], yerr=[s * factor for s in std],
                       marker="o", capsize=3, label=_label(name, scale))
    reference = probe.get("reference", {}).get(name)
    if reference and reference["n"]:
      ax.axhline(reference["mean"] * factor, linestyle="--", linewidth=1,
                 color=line[0].get_color())
  counts = next(iter(probe.get("counts", {}).values()), [probe["num_images"]] * len(ks))
  ax.set_xticks(ks, [f"{k}\n(n={n})" for k, n in zip(ks, counts)])
  ax.set_xlabel("visual words k in the generated caption (n captions scored)")
  ax.set_ylabel("mean match score (bars: +-1 std)")
  ax.set_ylim(bottom=0.0)
  ax.set_title(f"Template captions with k visual words ({probe['num_images']} images)\n"
               "dashed: the images' first reference caption", fontsize="medium")
  ax.legend(fontsize="small", loc="lower right")
  ax.grid(alpha=0.3)
  fig.tight_layout()
  return fig


def plot_visual_words(probe: Mapping, path: str,
                      scale: Mapping[str, float] = DEFAULT_SCALE) -> str:
  """Figure 3 (see `visual_words_figure`) written to `path`."""
  return _save(visual_words_figure(probe, scale), path)
