"""Input checks shared by the caption and VQA metrics: one prediction per item, one non-empty list
of reference strings per prediction."""

from __future__ import annotations

from collections.abc import Sequence


def check_predictions(predictions: Sequence[str], references: Sequence[Sequence[str]], item: str) -> None:
    """Raise ValueError naming what is wrong; `item` is what one prediction is ("caption", "answer")."""
    if isinstance(predictions, str) or not isinstance(predictions, Sequence):
        raise ValueError(f"predictions must be a list of strings, one {item} each")
    if len(predictions) == 0:
        raise ValueError(f"predictions is empty: need a non-empty list of strings, at least one {item} to score")
    if len(predictions) != len(references):
        raise ValueError(f"got {len(predictions)} predictions but {len(references)} reference lists; "
                         f"pass one list of reference {item}s per prediction")
    for i, (prediction, refs) in enumerate(zip(predictions, references)):
        if not isinstance(prediction, str):
            raise ValueError(f"predictions[{i}] is {type(prediction).__name__}, expected str")
        if isinstance(refs, str):
            raise ValueError(f"references[{i}] is a string; wrap it in a list (a non-empty list of strings): "
                             f"references=[[{item}], ...]")
        if not isinstance(refs, Sequence) or len(refs) == 0:
            raise ValueError(f"references[{i}] is empty: every prediction needs at least one reference "
                             f"(a non-empty list of strings)")
        if not all(isinstance(r, str) for r in refs):
            raise ValueError(f"references[{i}] must contain only strings")
