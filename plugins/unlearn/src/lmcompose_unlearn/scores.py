"""TOFU's scores as pure functions: ROUGE-L recall, the truth ratio and its two
aggregations, forget quality (a two-sample KS test) and model utility (a harmonic mean).

* ``rouge_l_recall(reference, generated)`` — the longest common subsequence of the two
  texts' tokens over the reference's length, tokenized as ``rouge_score`` does (lower case,
  runs of characters other than a-z and 0-9 as separators, words longer than three letters
  Porter-stemmed: TOFU's ``RougeScorer(['rougeL'], use_stemmer=True)``); 0 when either text
  has no tokens.
* ``truth_ratio(paraphrased_nll, perturbed_nlls)`` — R = P(perturbed) / P(paraphrased), each
  probability length-normalised: exp(NLL_para − mean_k NLL_pert_k), NLL the mean over an
  answer's tokens. The perturbed answers' NLLs are averaged before the exponential (a
  geometric mean of their per-token probabilities), as TOFU's ``evaluate_util.py`` and
  open-unlearning's ``truth_ratio`` compute it (the TOFU paper writes an arithmetic mean).
* ``forget_truth_ratio(rs)`` — mean of min(R, 1/R) (TOFU's forget set; open-unlearning's
  ``closer_to_1_better``): 1 when the model finds the right and the wrong answers equally
  likely, the state of a model that never learned them.
* ``retain_truth_ratio(rs)`` — mean of max(0, 1 − R) (TOFU's retain, real-authors and
  world-facts sets; ``true_better``): near 1 when the right answer is much more likely.
* ``forget_quality(rs, reference_rs)`` — the p-value of ``scipy.stats.ks_2samp`` between the
  model's forget-set truth ratios and those of a model never trained on the forget set
  (TOFU's ``get_forget_quality``; the test is the same on R or 1/R).
* ``harmonic_mean(values)`` — TOFU's model utility (``scipy.stats.hmean``): 0 when any value is 0.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Sequence

__all__ = [
    "forget_quality",
    "forget_truth_ratio",
    "harmonic_mean",
    "lcs_length",
    "retain_truth_ratio",
    "rouge_l_recall",
    "rouge_tokens",
    "truth_ratio",
]

_NON_ALNUM = re.compile(r"[^a-z0-9]+")


@functools.lru_cache(maxsize=1)
def _stemmer():
    from nltk.stem import porter

    return porter.PorterStemmer()


def rouge_tokens(text: str) -> list[str]:
    """``rouge_score``'s default tokenizer with stemming: lower case, split on anything but
    a-z0-9, words longer than three characters Porter-stemmed."""
    stem = _stemmer().stem
    words = [w for w in _NON_ALNUM.sub(" ", text.lower()).split() if w]
    return [stem(w) if len(w) > 3 else w for w in words]


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence of ``a`` and ``b`` (one row of the table kept)."""
    if not a or not b:
        return 0
    prev = [0] * (len(b) + 1)
    for x in a:
        row = [0]
        for j, y in enumerate(b, 1):
            row.append(prev[j - 1] + 1 if x == y else max(prev[j], row[j - 1]))
        prev = row
    return prev[-1]


def rouge_l_recall(reference: str, generated: str) -> float:
    """ROUGE-L recall of ``generated`` against ``reference`` (TOFU's ``rougeL_recall``)."""
    ref, gen = rouge_tokens(reference), rouge_tokens(generated)
    if not ref or not gen:
        return 0.0
    return lcs_length(ref, gen) / len(ref)


def truth_ratio(paraphrased_nll: float, perturbed_nlls: Sequence[float]) -> float:
    """R = exp(NLL_para − mean NLL_pert): the perturbed answers' length-normalised
    probability over the paraphrased answer's."""
    if not perturbed_nlls:
        raise ValueError("the truth ratio needs at least one perturbed answer")
    return math.exp(paraphrased_nll - sum(perturbed_nlls) / len(perturbed_nlls))


def forget_truth_ratio(rs: Sequence[float]) -> float | None:
    """Mean of min(R, 1/R) (TOFU's forget set): higher is better for unlearning."""
    return sum(min(r, 1.0 / r) if r > 0 else 0.0 for r in rs) / len(rs) if rs else None


def retain_truth_ratio(rs: Sequence[float]) -> float | None:
    """Mean of max(0, 1 − R) (TOFU's retain and utility sets): higher is better."""
    return sum(max(0.0, 1.0 - r) for r in rs) / len(rs) if rs else None


def forget_quality(rs: Sequence[float], reference_rs: Sequence[float]) -> float | None:
    """p-value of the two-sample KS test of ``rs`` against ``reference_rs`` (high: the model's
    truth ratios are indistinguishable from those of a model that never saw the forget set)."""
    if not rs or not reference_rs:
        return None
    from scipy.stats import ks_2samp

    return float(ks_2samp(list(rs), list(reference_rs)).pvalue)


def harmonic_mean(values: Sequence[float]) -> float | None:
    """The harmonic mean (TOFU's model utility); 0 when any value is 0, None without values."""
    if not values:
        return None
    if any(v <= 0 for v in values):
        return 0.0
    return len(values) / sum(1.0 / v for v in values)
