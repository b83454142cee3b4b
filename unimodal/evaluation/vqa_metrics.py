"""VQAv2-style accuracy with the official answer normalisation.

Normalisation follows the official evaluation script (GT-Vision-Lab/VQA,
`PythonEvaluationTools/vqaEvaluation/vqaEval.py`, `processPunctuation` then `processDigitArticle`):
punctuation is removed or turned into spaces, periods not followed by a digit are dropped, text is
lowercased, number words zero..ten (and "none") become digits, the articles a/an/the are removed,
and apostrophe-less contractions are restored ("dont" -> "don't").

Differences from the official script, on purpose:
- We normalise the predictions *and* every reference the same way. The official script fully
  normalises the prediction but only punctuation-processes references (and only when annotators
  disagree), because the released VQAv2 answers are already normalised; on VQAv2 the two agree,
  and on any other reference set ours does not penalise "Two" against "2".
- Scoring: a question with more than 3 references (VQAv2 always has 10) uses the official formula,
  the mean over the leave-one-out subsets of min(#matches among the other references / 3, 1).
  With 10 references, 1/2/3+ matching annotators give 0.3/0.6/0.9..1.0 (not 1/3, 2/3, 1).
  A question with 1-3 references (e.g. the synthetic world's single exact answer) scores
  #matches / #references, so one correct answer to one reference scores 1, not 1/3.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from unimodal.evaluation.inputs import check_predictions

# "an answer is deemed 100% accurate if at least 3 workers provided that exact answer" (VQA paper)
VQA_MATCHES_FOR_FULL_CREDIT = 3

# The official table, verbatim (its capitalised keys such as "Im" never match: text is
# lowercased before the lookup).
_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've",
    "couldnt": "couldn't", "couldn'tve": "couldn't've", "couldnt've": "couldn't've",
    "didnt": "didn't", "doesnt": "doesn't", "dont": "don't", "hadnt": "hadn't",
    "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't", "havent": "haven't",
    "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd",
    "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm",
    "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've",
    "itll": "it'll", "let's": "let's", "maam": "ma'am", "mightnt": "mightn't",
    "mightnt've": "mightn't've", "mightn'tve": "mightn't've", "mightve": "might've",
    "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at", "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've",
    "she's": "she's", "shouldve": "should've", "shouldnt": "shouldn't",
    "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've", "somebodyll": "somebody'll",
    "somebodys": "somebody's", "someoned": "someone'd", "someoned've": "someone'd've",
    "someone'dve": "someone'd've", "someonell": "someone'll", "someones": "someone's",
    "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's",
    "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've",
    "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've",
    "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've",
    "werent": "weren't", "whatll": "what'll", "whatre": "what're", "whats": "what's",
    "whatve": "what've", "whens": "when's", "whered": "where'd", "wheres": "where's",
    "whereve": "where've", "whod": "who'd", "whod've": "who'd've", "who'dve": "who'd've",
    "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll", "whyre": "why're",
    "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all",
    "yall'll": "y'all'll", "y'allll": "y'all'll", "yall'd've": "y'all'd've",
    "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've", "youd": "you'd", "youd've": "you'd've",
    "you'dve": "you'd've", "youll": "you'll", "youre": "you're", "youve": "you've",
}  # fmt: skip
_NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}  # fmt: skip
_ARTICLES = {"a", "an", "the"}
_PUNCTUATION = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<",
                "@", "`", ",", "?", "!"]  # fmt: skip
# The official pattern, kept verbatim: "(?!<=\d)" was meant as a look-behind but is a (vacuous)
# look-ahead, so the effect is "drop every period that is not followed by a digit" ("2.5" survives).
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_BETWEEN_DIGITS = re.compile(r"(\d)(,)(\d)")


def _process_punctuation(text: str) -> str:
    out = text
    for p in _PUNCTUATION:
        # Punctuation next to a space (or any text with a digit,digit comma) is deleted, otherwise
        # it separates words: "black-and-white" -> "black and white", "1,000" -> "1000".
        if (p + " " in text or " " + p in text) or _COMMA_BETWEEN_DIGITS.search(text):
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD_STRIP.sub("", out)


def _process_digits_articles(text: str) -> str:
    words = [_NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    words = [w for w in words if w not in _ARTICLES]
    return " ".join(_CONTRACTIONS.get(w, w) for w in words)


def normalize_answer(answer: str) -> str:
    """The official VQA answer normalisation.

    >>> normalize_answer("Two dogs.")
    '2 dogs'
    >>> normalize_answer("The black-and-white cat")
    'black and white cat'
    """
    answer = answer.replace("\n", " ").replace("\t", " ").strip()
    return _process_digits_articles(_process_punctuation(answer))


def vqa_score(prediction: str, references: Sequence[str]) -> float:
    """Accuracy in [0, 1] of one answer against its references (see the module docstring)."""
    if isinstance(references, str) or len(references) == 0:
        raise ValueError("references must be a non-empty list of answer strings")
    pred = normalize_answer(prediction)
    matches = [normalize_answer(r) == pred for r in references]
    num_refs = len(matches)
    if num_refs <= VQA_MATCHES_FOR_FULL_CREDIT:
        return sum(matches) / num_refs
    total_matches = sum(matches)
    # Leave each reference out in turn and count the matches among the others.
    per_subset = [
        min(1.0, (total_matches - left_out) / VQA_MATCHES_FOR_FULL_CREDIT) for left_out in matches
    ]
    return sum(per_subset) / num_refs


def vqa_accuracy(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Mean VQA accuracy in [0, 1] over questions; `references[i]` lists the human answers to
    question i (10 for VQAv2, often 1 for the synthetic world)."""
    check_predictions(predictions, references, "answer")
    return sum(vqa_score(p, r) for p, r in zip(predictions, references)) / len(predictions)
