"""Caption metrics: corpus BLEU-4, CIDEr-D and exact match, over several references per image.

Both scores follow the coco-caption reference code (`pycocoevalcap`, `bleu_scorer.py` and
`cider_scorer.py`) number for number, with one deliberate difference: captions are tokenised by
`tokenize` below (lowercase, split on anything that is not a letter or digit) instead of the Java
PTB tokenizer, so this module needs neither Java nor the 100 MB `pycocoevalcap` wheel. The PTB
tokenizer also lowercases and drops punctuation; it differs from ours only in how it splits
contractions ("don't" -> "do n't" there, "don t" here), which rarely changes a score.

Shapes used throughout: `predictions[i]` is the one generated caption for image i and
`references[i]` is the list of (one or more) human captions for the same image.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence

from unimodal.evaluation.inputs import check_predictions

MAX_NGRAM = 4  # BLEU-4 and CIDEr both use 1- to 4-grams.
# coco-caption's smoothing constants: `tiny` keeps a zero match count from giving log(0), `small`
# keeps an empty candidate from dividing by zero. Kept so our numbers equal theirs.
_BLEU_TINY = 1e-15
_BLEU_SMALL = 1e-9
CIDER_SIGMA = 6.0  # std-dev (in words) of CIDEr-D's Gaussian length penalty (Vedantam et al. 2015).
CIDER_SCALE = 10.0  # CIDEr-D is reported ×10 so that it is on a scale similar to other metrics.

_WORD = re.compile(r"[^\W_]+")  # runs of letters/digits (Unicode-aware); everything else separates.


def tokenize(text: str) -> list[str]:
    """Lowercase `text` and split it into words, dropping punctuation.

    >>> tokenize("A red Circle, on the left!")
    ['a', 'red', 'circle', 'on', 'the', 'left']
    """
    return _WORD.findall(text.lower())


def normalize_caption(text: str) -> str:
    """The caption as its tokens joined by single spaces (used by `exact_match`)."""
    return " ".join(tokenize(text))


def _ngram_counts(words: list[str], max_n: int = MAX_NGRAM) -> Counter:
    """Counts of every 1..max_n-gram (as a tuple of words) in `words`."""
    counts: Counter = Counter()
    for n in range(1, max_n + 1):
        for i in range(len(words) - n + 1):
            counts[tuple(words[i : i + n])] += 1
    return counts


# ---------------------------------------------------------------------------------------------
# BLEU-4
# ---------------------------------------------------------------------------------------------


def bleu_scores(
    predictions: Sequence[str], references: Sequence[Sequence[str]], max_n: int = MAX_NGRAM
) -> list[float]:
    """Corpus BLEU-1..BLEU-`max_n` (Papineni et al. 2002) as computed by coco-caption.

    N-gram matches are clipped by the largest count of that n-gram in any one reference of the same
    image and summed over the whole corpus; the brevity penalty uses, for each candidate, the
    reference length closest to the candidate's length (the shorter one on a tie), summed over the
    corpus. Returns `[BLEU-1, ..., BLEU-max_n]`, each in [0, 1].
    """
    check_predictions(predictions, references, "caption")
    correct = [0] * max_n  # clipped n-gram matches, per n
    guess = [0] * max_n  # candidate n-grams, per n
    total_test_len = 0
    total_ref_len = 0
    for pred, refs in zip(predictions, references):
        words = tokenize(pred)
        test_len = len(words)
        ref_words = [tokenize(r) for r in refs]
        max_ref_counts: Counter = Counter()
        for rw in ref_words:
            max_ref_counts |= _ngram_counts(rw, max_n)  # `|` keeps the max count per n-gram
        for ngram, count in _ngram_counts(words, max_n).items():
            correct[len(ngram) - 1] += min(count, max_ref_counts[ngram])
        for n in range(1, max_n + 1):
            guess[n - 1] += max(0, test_len - n + 1)
        total_test_len += test_len
        total_ref_len += min((abs(len(rw) - test_len), len(rw)) for rw in ref_words)[1]

    ratio = (total_test_len + _BLEU_TINY) / (total_ref_len + _BLEU_SMALL)
    brevity_penalty = math.exp(1 - 1 / ratio) if ratio < 1 else 1.0
    scores = []
    product = 1.0
    for n in range(max_n):
        product *= (correct[n] + _BLEU_TINY) / (guess[n] + _BLEU_SMALL)
        scores.append(brevity_penalty * product ** (1 / (n + 1)))
    return scores


def bleu4(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Corpus BLEU-4 in [0, 1] (coco-caption's `Bleu(4)` fourth value). See `bleu_scores`."""
    return bleu_scores(predictions, references, MAX_NGRAM)[-1]


# ---------------------------------------------------------------------------------------------
# CIDEr-D
# ---------------------------------------------------------------------------------------------


def _tfidf(counts: Counter, doc_freq: Counter, log_num_docs: float):
    """Per-n tf-idf vectors, their norms and the caption's length (as coco-caption measures it)."""
    vecs: list[dict] = [{} for _ in range(MAX_NGRAM)]
    norms = [0.0] * MAX_NGRAM
    for ngram, tf in counts.items():
        n = len(ngram) - 1
        # An n-gram that no reference has gets df = 1 (log 1 = 0), i.e. the largest idf.
        value = tf * (log_num_docs - math.log(max(1.0, doc_freq[ngram])))
        vecs[n][ngram] = value
        norms[n] += value * value
    # coco-caption counts the *bigrams* as the length (a quirk: words - 1); the penalty only uses
    # differences of lengths, which equal word-count differences for non-empty captions.
    length = sum(tf for ngram, tf in counts.items() if len(ngram) == 2)
    return vecs, [math.sqrt(x) for x in norms], length


def cider_d_per_image(
    predictions: Sequence[str], references: Sequence[Sequence[str]]
) -> list[float]:
    """CIDEr-D (Vedantam et al. 2015) of each prediction, as coco-caption's `Cider` computes it.

    Document frequencies come from the references of the whole evaluated corpus (an n-gram counts
    once per image), idf = log(#images) - log(df). For each reference, and each n in 1..4, the
    score is the cosine of the tf-idf vectors with the candidate's values clipped by the
    reference's, times exp(-(len_cand - len_ref)^2 / (2 * 6^2)); these are averaged over n and over
    references and multiplied by 10. A single-image corpus always scores 0 (every idf is log 1),
    exactly as in coco-caption: score a whole test set at once.
    """
    check_predictions(predictions, references, "caption")
    cand_counts = [_ngram_counts(tokenize(p)) for p in predictions]
    ref_counts = [[_ngram_counts(tokenize(r)) for r in refs] for refs in references]

    doc_freq: Counter = Counter()
    for refs in ref_counts:
        doc_freq.update(set().union(*refs))
    log_num_docs = math.log(float(len(ref_counts)))

    scores = []
    for cand, refs in zip(cand_counts, ref_counts):
        vec, norm, length = _tfidf(cand, doc_freq, log_num_docs)
        total = 0.0
        for ref in refs:
            vec_ref, norm_ref, length_ref = _tfidf(ref, doc_freq, log_num_docs)
            penalty = math.exp(-((length - length_ref) ** 2) / (2 * CIDER_SIGMA**2))
            for n in range(MAX_NGRAM):
                ref_n = vec_ref[n]
                # Clipping: a candidate n-gram counts at most as much as the reference has it.
                dot = sum(min(v, ref_n.get(g, 0.0)) * ref_n.get(g, 0.0) for g, v in vec[n].items())
                if norm[n] != 0 and norm_ref[n] != 0:
                    dot /= norm[n] * norm_ref[n]
                total += dot * penalty
        scores.append(CIDER_SCALE * total / MAX_NGRAM / len(refs))
    return scores


def cider_d(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Corpus CIDEr-D: the mean of `cider_d_per_image` (0 for no overlap; ~1-3 for good captions,
    up to 10 × (fraction of references matched) for a candidate identical to references)."""
    scores = cider_d_per_image(predictions, references)
    return sum(scores) / len(scores)


# ---------------------------------------------------------------------------------------------
# Exact match and the bundle the runner calls
# ---------------------------------------------------------------------------------------------


def exact_match(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Fraction of predictions equal to at least one of their references after
    `normalize_caption` (case and punctuation are ignored). Meaningful on the synthetic world,
    whose captions are exact."""
    check_predictions(predictions, references, "caption")
    hits = sum(
        normalize_caption(p) in {normalize_caption(r) for r in refs}
        for p, refs in zip(predictions, references)
    )
    return hits / len(predictions)


def caption_scores(
    predictions: Sequence[str], references: Sequence[Sequence[str]]
) -> dict[str, float]:
    """All caption metrics at once: `{"caption_bleu4", "caption_cider", "caption_exact"}`."""
    return {
        "caption_bleu4": bleu4(predictions, references),
        "caption_cider": cider_d(predictions, references),
        "caption_exact": exact_match(predictions, references),
    }
