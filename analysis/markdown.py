"""report.md from the analysis result: every table with its coverage and a legend under it.

Every label is defined where it first appears: each table is followed by a short legend of its
columns and symbols, and says over how many captions (and images) it was computed. The paper
calls the cross-entropy captioner "CE"; this report calls it XE everywhere.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

# Symbols of the prefix and pattern columns (analysis/patterns.py), for the Table 5 legend.
SYMBOLS = {
    "Prefix": "the caption's prefix (left columns)",
    "NOUN.P": "noun phrase: determiners, then adjectives or numbers, then one or more nouns "
              "(DET* ADJ* NOUN+; \"his\" counts as a determiner)",
    "IMAGE.P": "noun phrase whose nouns include \"image\" (\"image image\", \"closeup image\"); "
               "its determiners are written out (\"a+IMAGE.P\")",
    "REL": "relation word: a preposition (ADP) or a verb (VERB)",
    "CCONJ": "coordinating conjunction (\"and\", \"but\")",
    "AUX": "auxiliary or copula (\"is\", \"are\"); written as the word itself in prefixes",
    "DET": "determiner that starts no noun phrase (\"a\" before an adverb, a verb or a "
           "conjunction)",
    "ADJ": "adjective or number that is not followed by a noun",
    "ADV": "adverb", "PRON": "pronoun", "PART": "particle (\"to\", \"not\", \"'s\")",
    "SCONJ": "subordinating conjunction (\"while\", \"as\")", "INTJ": "interjection",
    "SYM": "symbol", "PUNCT": "punctuation", "NUM": "number",
    "X": "a word spaCy assigns no class (typos, foreign words, fragments)",
}
_SYMBOL_RE = re.compile(r"[A-Za-z.']+")


def fmt(value, digits: int = 1) -> str:
  return "–" if value is None else f"{value:.{digits}f}"


def _pm(mean, std, digits: int = 1) -> str:
  return fmt(mean, digits) if std is None else f"{fmt(mean, digits)} ± {fmt(std, digits)}"


def _ratio(entry: Mapping) -> str:
  return f"{100 * entry['ratio']:.1f}%"


def _symbols_legend(values) -> str:
  found = []
  for value in values:
    for token in _SYMBOL_RE.findall(value):
      if token in SYMBOLS and token not in found:
        found.append(token)
  parts = [f"`{s}`: {SYMBOLS[s]}" for s in found]
  return ("; ".join(parts) + ". Lower-case items (\"a\", \"that\", \"is\", \"of\") are the words "
          "themselves. `(X)*`: X repeated one or more times; `(X)?`: X zero or one time; `+` "
          "joins consecutive parts.")


def _coverage_line(result: Mapping) -> str:
  parts = []
  for name, r in result["runs"].items():
    cov = r["coverage"]
    parts.append(f"`{name}` {cov['with_references']} of {cov['analysed']} captions")
  return ("Computed over the captions whose image has references (one caption per image): "
          + "; ".join(parts) + ".")


def _header(result: Mapping) -> list[str]:
  corpus, norm = result["corpus"], result.get("normalisation", {})
  out = ["# Caption analysis", ""]
  for name, r in result["runs"].items():
    cov = r["coverage"]
    skipped = f", {len(cov['skipped'])} skipped" if cov["skipped"] else ""
    out.append(f"- `{name}`: {cov['analysed']} captions analysed of {cov['read']} read"
               f"{skipped}; {cov['with_references']} have references. Source: `{r['source']}`"
               + (f"; SCST reward: {r['reward']}" if r["reward"] else ""))
  out += ["", f"Captions were read with tokenizer `{norm.get('tokenizer', '?')}` (ptb: "
          "coco-caption's Stanford PTBTokenizer, lower-cased, punctuation removed; lower: its "
          "Java-free approximation) and bad-caption policy "
          f"`{norm.get('bad_captions', '?')}` (refuse: a null or empty caption stops the "
          f"analysis; skip: it is left out and listed). References: {corpus['references']}. "
          f"Language-model text: {corpus['lm']}.", ""]
  if result.get("warnings"):
    out += ["## Warnings", ""] + [f"- ⚠ {w}" for w in result["warnings"]] + [""]
  return out


def _table4(result: Mapping) -> list[str]:
  runs, lm = result["runs"], result["lm"]
  out = ["## Sentence and token statistics (Table 4)", "",
         "Over every caption analysed of each run (column `captions`).", "",
         "| run | captions | PPL (OOV %) | Avg. length | Nouns | Unique nouns | Position nouns |",
         "|---|---|---|---|---|---|---|"]
  for name, r in runs.items():
    s, t = r["sentence"], r["tokens"]
    ppl = "–" if not s else f"{fmt(s['perplexity'])} ({100 * s['oov_share']:.1f}%)"
    out.append(f"| {name} | {r['num_captions']} | {ppl} | {fmt(t['avg_length'])} | "
               f"{fmt(t['nouns'])} | {fmt(t['unique_nouns'])} | "
               f"{fmt(t.get('position_nouns'), 2)} |")
  if lm:
    ppl_legend = (f"PPL: corpus perplexity under a {lm['order']}-gram interpolated Kneser-Ney "
                  f"LM (nltk KneserNeyInterpolated, discount {lm['discount']}) of "
                  f"{lm['train_captions']} training captions ({result['corpus']['lm']}); words "
                  f"seen < {lm['unk_cutoff']} times in training are <UNK>; one </s> per caption "
                  "(the paper used SRILM). OOV %: share of the run's words outside the LM's "
                  "vocabulary (read as <UNK>); above 10% the LM's text is of another kind and "
                  "the perplexity is not comparable.")
  else:
    ppl_legend = ("PPL: not computed, as no language-model text was given (pass lm_corpus=).")
  out += ["", f"Legend. {ppl_legend} Avg. length: words per caption. Nouns: tokens spaCy tags "
          "NOUN or PROPN per caption, position words included as in the paper's count. Unique "
          "nouns: distinct noun forms per caption. Position nouns: how many of the nouns are "
          "direction/position words (\"front\" in \"in front of\", \"top\", \"side\", \"right\""
          "; see analysis/pos.py); they are not visual words in the probes.", ""]
  return out


def _table5(result: Mapping) -> list[str]:
  runs = result["runs"]
  out = ["## Prefixes and sentence patterns (Table 5)", "",
         "Over every caption analysed of each run: " + ", ".join(
             f"`{n}` {r['num_captions']}" for n, r in runs.items()) + ".", "",
         "| run | top prefix | ratio | example | top literal prefix | ratio | top pattern | "
         "ratio | example |", "|---|---|---|---|---|---|---|---|---|"]
  values = []
  for name, r in runs.items():
    p = r["patterns"]
    pre, lit, pat = p["prefix"][0], p["literal_prefix"][0], p["pattern"][0]
    values += [e["value"] for kind in ("prefix", "pattern") for e in p[kind]]
    out.append(f"| {name} | `{pre['value']}` | {_ratio(pre)} | {pre['example']} | "
               f"{lit['value']} | {_ratio(lit)} | `{pat['value']}` | {_ratio(pat)} | "
               f"{pat['example']} |")
  out += ["", "Legend. Each caption is POS-tagged (spaCy) and cut into noun phrases and single "
          "tokens. Its prefix is its leading noun phrases plus the run of other tokens right "
          "after them, up to the next noun phrase (a caption without such tokens is all "
          "prefix). Top prefix: the prefix with noun phrases abstracted; top literal prefix: "
          "the prefix's own words, so its length varies with the caption (\"a bird that\" 3 "
          "words, \"a image image that is\" 5). Pattern: the prefix, then the rest of the "
          "caption as repeated units, each a run of connector tokens followed by noun phrases; "
          "a connector present in every unit is written bare, one present in only some as "
          "`(K)?`. Ratio: share of the run's captions with that value; example: the first "
          "such caption. Symbols: " + _symbols_legend(values), ""]
  return out


def _figure4(result: Mapping) -> list[str]:
  out = ["## Top unigrams (Figure 4)", "", f"![top unigrams]({result['figures']['unigrams']})",
         ""]
  for name, r in result["runs"].items():
    words = ", ".join(
        f"{u['word']} ({100 * u['share']:.1f}%, "
        f"{'NOUN (position)' if u.get('position') else u['pos']})" for u in r["unigrams"])
    out.append(f"- **{name}** ({r['num_captions']} captions): {words}")
  out += ["", "Legend. Share: the word's count over all words of the run's captions; all panels "
          "share one x axis. POS: the word's most frequent spaCy tag in these captions (NOUN, "
          "VERB, ADP = preposition, DET = determiner, ADJ, CCONJ = conjunction, AUX = auxiliary). "
          "NOUN (position): a direction or position word tagged NOUN (\"right\" in \"on the "
          "right\"), not a visual word.", ""]
  return out


def _probes(result: Mapping) -> list[str]:
  p = result["probes"]
  run = p["run"]
  rep, tpl, vis = p["replacement"], p["templates"], p["visual_words"]
  out = ["", f"## Probes (section 5), from the captions of `{run}`", "",
         "### Replacing visual words vs other words (Figure 2)", "",
         f"Over the {rep['num_captions']} captions of `{run}` (one per image) whose image has "
         "references and that contain a visual word.", "",
         f"![replacement]({result['figures']['replacement']})", "",
         f"| scorer | {run} captions | other words replaced | visual words replaced |",
         "|---|---|---|---|"]
  for name, s in rep["scores"].items():
    spread = rep.get("spread", {}).get(name, {})
    cells = [_pm(s[k], spread.get(k, {}).get("std"))
             for k in ("original", "replace_others", "replace_nouns")]
    out.append(f"| {name} | " + " | ".join(cells) + " |")
  out += ["", "Legend. Mean match score ± standard deviation over those captions. Visual word: "
          "a token tagged NOUN/PROPN that is not a position word nor UNK. Visual words replaced: "
          "each by a wrong noun (never a word of that image's references); other words "
          "replaced: every other word by a random non-noun word, visual words kept."]
  if rep["examples"]:
    e = rep["examples"][0]
    out += ["", f"Example: \"{e['original']}\" / \"{e['replace_others']}\" / "
                f"\"{e['replace_nouns']}\""]
  out += ["", "### Template reconstructions (Table 7)", "",
          f"Over the {tpl['num_captions']} captions of `{run}` with references and at least "
          "one visual word.", "",
          f"| scorer | {run} | Recons. | template |", "|---|---|---|---|"]
  for name, s in tpl["table"].items():
    out.append(f"| {name} | {_pm(s['original'], s.get('original_std'))} | "
               f"{_pm(s['recons'], s.get('recons_std'))} | `{s['template']}` |")
  scorers = list(tpl["table"])
  out += ["", "Every template under every scorer (rows: whose template):", "",
          "| template | " + " | ".join(scorers) + " |", "|---|" + "---|" * len(scorers)]
  for owner, row in tpl["matrix"].items():
    out.append(f"| {owner} | " + " | ".join(fmt(row.get(s)) for s in scorers) + " |")
  example = next(iter(tpl.get("examples", {}).values()), [])
  out += ["", f"Legend. `{run}`: mean score (± std) of the captions as they are. Recons.: the "
          "same captions rebuilt from their visual words (each once, in order) poured into the "
          "scorer's template from the paper's Table 7 (`NOUN` is a slot; `(...)*` repeats for "
          "every further word). Row `default`: the template `a+NOUN+(and+a+NOUN)*`, used for "
          "scorers the paper did not probe."
          + (f" Example: \"{example[0][0]}\" -> \"{example[0][1]}\"." if example else ""), ""]
  out += _figure3(result, vis)
  return out


def _figure3(result: Mapping, vis: Mapping) -> list[str]:
  n = vis["num_images"]
  out = ["### Score vs number of visual words (Figure 3)", "",
         f"Scores generated captions, not real ones: for each of {n} images, its k most "
         "mentioned reference visual words poured into the scorer's template; one caption per "
         f"image and k, so n = {n} captions for every k (the same images for every k: those "
         f"with at least {max(vis['k'])} distinct visual words in their references).", "",
         f"![visual words]({result['figures']['visual_words']})", "",
         "| scorer | " + " | ".join(f"k={k}" for k in vis["k"]) + " | first reference |",
         "|---|" + "---|" * (len(vis["k"]) + 1)]
  for name, values in vis["scores"].items():
    std = vis.get("std", {}).get(name, [None] * len(values))
    ref = vis.get("reference", {}).get(name, {})
    out.append(f"| {name} | " + " | ".join(_pm(v, s) for v, s in zip(values, std))
               + f" | {_pm(ref.get('mean'), ref.get('std'))} |")
  example = next(iter(vis.get("examples", {}).items()), None)
  out += ["", "Legend. Mean match score ± standard deviation over the n captions. First "
          "reference: the same images' first human reference caption, for scale."
          + (f" Example ({example[0]}'s template, k = {vis['k'][0]}..{vis['k'][-1]}): "
             + " / ".join(f"\"{c}\"" for c in example[1]) + "." if example and example[1]
             else ""), ""]
  return out


def render(result: Mapping, table2: str) -> str:
  """report.md from the analysis dict (see `analysis.report.analyze`) and the Table 2 markdown."""
  runs = result["runs"]
  out = _header(result)
  out += ["## Scores and captioning metrics (Table 2)", "", _coverage_line(result), "", table2,
          "", f"Legend. Rows: `XE` is the captioner trained with cross-entropy (the paper's "
          "\"CE\"), `SCST-<scorer>` the same after SCST with that scorer's match score as "
          "reward; other rows are captions files. Scorer columns: mean match score of the "
          "run's captions (100 x ITM probability; CLIP: 100 x cosine). ↑/↓: above/below "
          f"`{result['reference']}` under that scorer. BLEU-1, BLEU-4, METEOR, ROUGE-L, CIDEr "
          "(CIDEr-D), SPICE: coco-caption metrics x100 against the references. –: not "
          "computed (see Notes).", ""]
  out += _table4(result) + _table5(result) + _figure4(result)
  if "probes" in result:
    out += _probes(result)
  out += ["", "## Per run", ""]
  for name, r in runs.items():
    out += [f"### {name}", "", "Examples: " + "; ".join(f"\"{c}\"" for c in r["examples"]), "",
            f"Top prefixes, literal prefixes and patterns over its {r['num_captions']} captions "
            "(legend under Table 5):", "",
            "| kind | value | ratio | example |", "|---|---|---|---|"]
    for kind in ("prefix", "literal_prefix", "pattern"):
      for e in r["patterns"][kind]:
        out.append(f"| {kind} | `{e['value']}` | {_ratio(e)} | {e['example']} |")
    out.append("")
  if result["notes"]:
    out += ["## Notes", ""] + [f"- {n}" for n in result["notes"]]
  return "\n".join(out) + "\n"
