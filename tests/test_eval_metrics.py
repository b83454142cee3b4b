"""Caption, VQA and report helpers of `eval/` (no model, no torch needed except one scalar)."""

import json
import math

import pytest
import torch
from PIL import Image

from unimodal.evaluation.caption_metrics import (
    bleu4,
    bleu_scores,
    caption_scores,
    cider_d,
    cider_d_per_image,
    exact_match,
    tokenize,
)
from unimodal.evaluation.report import (
    flatten_metrics,
    save_image_grid,
    write_markdown_summary,
    write_metrics_json,
)
from unimodal.evaluation.vqa_metrics import normalize_answer, vqa_accuracy, vqa_score
from unimodal.images import GRID_PADDING, image_grid  # eval reports draw the library's grid

# Two small corpora scored by coco-caption itself (pycocoevalcap 1.2, `Bleu(4)` and `Cider()`, fed
# the output of our `tokenize` joined by spaces); the numbers below are copied from that run.
# Over 300 random corpora (empty candidates, 1-5 references) the two agreed to within 4e-16.
SHAPES_PREDS = ["a red circle on the left", "two blue squares at the top", "a small green triangle"]
SHAPES_REFS = [
    ["a red circle on the left side", "red circle at left", "a red circle is on the left"],
    ["two blue squares on top", "there are two blue squares at the top"],
    ["a large green triangle", "one green triangle"],
]
SHAPES_COCO_BLEU = [0.9374999998828125, 0.8906566288752766, 0.8593502322641331, 0.8587978560805207]
SHAPES_COCO_CIDER = 4.682955958083737
SHAPES_COCO_CIDER_PER_IMAGE = [5.536896299267334, 5.936809104360706, 2.5751624706231704]

COCO_PREDS = ["a man riding a horse on the beach", "a dog", "the cat sat on the mat"]
COCO_REFS = [
    ["a man rides a horse along the beach", "a person on a horse at the sea shore"],
    ["a brown dog running across a field of grass", "a dog runs in a field"],
    ["the cat sat on the mat", "a cat is sitting on a mat"],
]
COCO_COCO_BLEU4 = 0.43502759127315044
COCO_COCO_CIDER = 2.9132330359196943


# ---------------------------------------------------------------------------------------------
# captions
# ---------------------------------------------------------------------------------------------


def test_tokenize_lowercases_and_drops_punctuation():
    assert tokenize("A red Circle, on the LEFT!") == ["a", "red", "circle", "on", "the", "left"]
    assert tokenize("  two-tone  (blue) ") == ["two", "tone", "blue"]
    assert tokenize("...") == []


def test_identical_captions_score_perfect_bleu_and_cider():
    preds = ["a red circle on the left", "two blue squares at the top"]
    refs = [[p] for p in preds]
    assert bleu4(preds, refs) == pytest.approx(1.0, abs=1e-9)
    # Each caption equals its only reference, so candidate and reference tf-idf vectors are equal
    # (cosine 1 for n = 1..4, no length penalty): CIDEr-D = 10 × 1.
    assert cider_d(preds, refs) == pytest.approx(10.0, abs=1e-9)


def test_bleu_hand_computed_with_brevity_penalty():
    # 5-word candidate, one 6-word reference sharing the first 4 words:
    # p1..p4 = 4/5, 3/4, 2/3, 1/2 -> geometric mean 0.2 ** (1/4); BP = exp(1 - 6/5).
    pred = ["red blue green pink cyan"]
    refs = [["red blue green pink gold teal"]]
    expected = 0.2**0.25 * math.exp(1 - 6 / 5)
    assert expected == pytest.approx(0.547518, abs=1e-6)
    assert bleu4(pred, refs) == pytest.approx(expected, abs=1e-9)
    assert bleu_scores(pred, refs)[0] == pytest.approx(0.8 * math.exp(-0.2), abs=1e-9)


def test_bleu_uses_closest_reference_length_shorter_on_tie():
    # References of length 4 and 6 are equally close to the 5-word candidate: coco-caption picks
    # the shorter one, so there is no brevity penalty (5 > 4).
    pred = ["red blue green pink cyan"]
    refs = [["red blue green pink", "gold teal navy lime plum rose"]]
    assert bleu4(pred, refs) == pytest.approx(0.2**0.25, abs=1e-9)


def test_bleu_and_cider_match_coco_caption():
    assert bleu_scores(SHAPES_PREDS, SHAPES_REFS) == pytest.approx(SHAPES_COCO_BLEU, rel=1e-12)
    assert cider_d(SHAPES_PREDS, SHAPES_REFS) == pytest.approx(SHAPES_COCO_CIDER, rel=1e-12)
    assert cider_d_per_image(SHAPES_PREDS, SHAPES_REFS) == pytest.approx(
        SHAPES_COCO_CIDER_PER_IMAGE, rel=1e-12
    )
    assert bleu4(COCO_PREDS, COCO_REFS) == pytest.approx(COCO_COCO_BLEU4, rel=1e-12)
    assert cider_d(COCO_PREDS, COCO_REFS) == pytest.approx(COCO_COCO_CIDER, rel=1e-12)


def test_cider_is_zero_when_idf_is_zero():
    # One image: every n-gram is in all (1) images, idf = log(1/1) = 0 (so in coco-caption too).
    assert cider_d(["a red circle on the left"], [["a red circle on the left"]]) == 0.0
    # Same for a corpus whose images all have the same reference.
    assert cider_d(["a b c d", "a b c d"], [["a b c d"], ["a b c d"]]) == 0.0


def test_cider_length_penalty_and_clipping():
    refs = [["one two three four"], ["five six seven eight"]]
    exact = cider_d_per_image(["one two three four", "five six seven eight"], refs)
    assert exact == pytest.approx([10.0, 10.0])
    # Saying it twice: every n-gram has idf log 2 (call it w). Clipping caps each doubled count at
    # the reference's, so per n the cosine is (sum of clipped products) / (|hyp| |ref|):
    #   n=1: 4w² / (4w · 2w) = 1/2           n=2: 3w² / (√13 w · √3 w) = 3/√39
    #   n=3: 2w² / (√10 w · √2 w) = 2/√20    n=4: 1w² / (√7 w · 1w) = 1/√7
    # and the length (bigram count, as coco-caption measures it) differs by 7 - 3 = 4.
    twice = "one two three four one two three four"
    repeated = cider_d_per_image([twice, "five six seven eight"], refs)
    cosines = [1 / 2, 3 / math.sqrt(39), 2 / math.sqrt(20), 1 / math.sqrt(7)]
    expected = 10 * sum(cosines) / 4 * math.exp(-(4**2) / (2 * 6**2))
    assert expected == pytest.approx(3.6144, abs=1e-4)
    assert repeated == pytest.approx([expected, 10.0], rel=1e-12)


def test_exact_match_ignores_case_and_punctuation():
    preds = ["A red circle.", "a blue square", "green"]
    refs = [["a red circle", "red circle"], ["a blue triangle"], ["Green!"]]
    assert exact_match(preds, refs) == pytest.approx(2 / 3)


def test_caption_scores_keys_and_values():
    scores = caption_scores(COCO_PREDS, COCO_REFS)
    assert set(scores) == {"caption_bleu4", "caption_cider", "caption_exact"}
    assert scores["caption_bleu4"] == pytest.approx(COCO_COCO_BLEU4, rel=1e-12)
    assert scores["caption_cider"] == pytest.approx(COCO_COCO_CIDER, rel=1e-12)
    assert scores["caption_exact"] == pytest.approx(1 / 3)  # "the cat sat on the mat"


@pytest.mark.parametrize("fn", [bleu4, cider_d, exact_match, caption_scores])
def test_caption_metrics_reject_bad_input(fn):
    with pytest.raises(ValueError, match="2 predictions but 1"):
        fn(["a", "b"], [["a"]])
    with pytest.raises(ValueError, match="empty"):
        fn([], [])
    with pytest.raises(ValueError, match="wrap it in a list"):
        fn(["a"], ["a"])
    with pytest.raises(ValueError, match="at least one reference"):
        fn(["a"], [[]])


# ---------------------------------------------------------------------------------------------
# VQA
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw, normalized",
    [
        ("Two", "2"),
        ("Two dogs.", "2 dogs"),
        ("The red one", "red 1"),
        ("none", "0"),
        ("black-and-white", "black and white"),
        ("1,000", "1000"),
        ("2.5", "2.5"),
        ("Yes!", "yes"),
        ("dont know", "don't know"),
        ("  an apple\n", "apple"),
    ],
)
def test_normalize_answer_official_rules(raw, normalized):
    assert normalize_answer(raw) == normalized


@pytest.mark.parametrize(
    "num_matches, expected", [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)]
)
def test_vqa_score_ten_references_official_leave_one_out(num_matches, expected):
    refs = ["red"] * num_matches + ["blue"] * (10 - num_matches)
    assert vqa_score("Red", refs) == pytest.approx(expected)


def test_vqa_score_few_references():
    assert vqa_score("Two", ["2"]) == 1.0
    assert vqa_score("three", ["2"]) == 0.0
    assert vqa_score("a circle", ["circle", "square"]) == 0.5
    assert vqa_score("circle", ["circle", "circle", "square"]) == pytest.approx(2 / 3)


def test_vqa_accuracy_averages_questions():
    preds = ["Red", "two", "left"]
    refs = [["red"], ["2"] * 3 + ["3"] * 7, ["right"]]
    # one reference, matched -> 1.0; 3 of 10 annotators -> (3 * 2/3 + 7 * 1) / 10 = 0.9; miss -> 0.0
    assert vqa_accuracy(preds, refs) == pytest.approx((1.0 + 0.9 + 0.0) / 3)


def test_vqa_accuracy_rejects_bad_input():
    with pytest.raises(ValueError, match="2 predictions but 1"):
        vqa_accuracy(["a", "b"], [["a"]])
    with pytest.raises(ValueError, match="non-empty"):
        vqa_accuracy([], [])
    with pytest.raises(ValueError, match="non-empty list of strings"):
        vqa_accuracy(["a"], ["a"])


# ---------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------


def test_metrics_json_is_flat(tmp_path):
    metrics = {
        "caption_bleu4": 0.435,
        "vqa": {"accuracy": torch.tensor(0.75), "num_questions": 12},
        "fid": float("nan"),
        "suite": "synthetic",
    }
    path = write_metrics_json(metrics, tmp_path / "out" / "metrics.json")
    assert json.loads(path.read_text()) == {
        "caption_bleu4": 0.435,
        "vqa_accuracy": 0.75,
        "vqa_num_questions": 12,
        "fid": None,
        "suite": "synthetic",
    }
    with pytest.raises(ValueError, match="metrics must be numbers"):
        flatten_metrics({"bad": [1, 2]})


def _checker(colour_a, colour_b):
    """A 2×2-block 32×32 checkerboard: each quadrant one colour."""
    img = Image.new("RGB", (32, 32), colour_a)
    img.paste(Image.new("RGB", (16, 16), colour_b), (16, 0))
    img.paste(Image.new("RGB", (16, 16), colour_b), (0, 16))
    return img


def test_grid_size_and_nearest_upscaling(tmp_path):
    images = [_checker((255, 0, 0), (0, 0, 255)) for _ in range(10)]
    path = save_image_grid(images, None, tmp_path / "grid.png", cell_size=64, columns=4)
    grid = Image.open(path)
    pad = GRID_PADDING
    assert grid.size == (4 * 64 + 5 * pad, 3 * 64 + 4 * pad)  # 10 images -> 4 columns, 3 rows
    # NEAREST: each 16-px quadrant becomes an exact 32-px block, no blurred edge.
    assert grid.getpixel((pad + 31, pad + 31)) == (255, 0, 0)
    assert grid.getpixel((pad + 32, pad + 31)) == (0, 0, 255)
    assert grid.getpixel((pad + 32, pad + 32)) == (255, 0, 0)
    # The 11th and 12th cells are empty background.
    assert grid.getpixel((pad + 3 * (64 + pad) + 10, pad + 2 * (64 + pad) + 10)) == (255, 255, 255)


def test_grid_labels_wrap_under_each_image(tmp_path):
    images = [_checker((0, 255, 0), (0, 0, 0)) for _ in range(3)]
    short = image_grid(images, ["red", "blue", "green"], cell_size=128, columns=8)
    long_label = "a small red circle at the top left next to a large blue square"
    wrapped = image_grid(images, ["red", long_label, "green"], cell_size=128, columns=8)
    # One row of 3 cells; the width does not depend on the labels.
    assert short.width == wrapped.width == 3 * 128 + 4 * GRID_PADDING
    assert short.height > 128 + 2 * GRID_PADDING  # room for one line of text
    assert wrapped.height > short.height  # the long label wrapped onto more lines
    # Text is drawn in the label band below the first image (dark pixels on white).
    band = short.crop((GRID_PADDING, GRID_PADDING + 128, GRID_PADDING + 128, short.height))
    assert min(band.convert("L").getdata()) < 128
    with pytest.raises(ValueError, match="3 images but 2 labels"):
        image_grid(images, ["a", "b"])


def test_markdown_summary_has_metrics_and_grid_links(tmp_path):
    grid = save_image_grid([_checker((1, 2, 3), (4, 5, 6))], ["x"], tmp_path / "grids" / "gen.png")
    path = write_markdown_summary(
        {"caption_bleu4": COCO_COCO_BLEU4, "fid": 23.5, "num_images": 16},
        {"generations": grid},
        tmp_path / "summary.md",
        title="tiny run",
    )
    text = path.read_text()
    assert text.startswith("# tiny run\n")
    assert "| caption_bleu4 | 0.4350 |" in text
    assert "| fid | 23.5000 |" in text
    assert "| num_images | 16 |" in text
    assert "![generations](grids/gen.png)" in text


# ------------------------------------------------------------------ FID/KID from few samples
def test_kid_spread_is_reported_only_over_distinct_subsets():
    from unimodal.evaluation.image_metrics import fid_kid_from_features

    generator = torch.Generator().manual_seed(0)
    real, fake = torch.randn(200, 16, generator=generator), torch.randn(200, 16, generator=generator) + 0.5
    whole = fid_kid_from_features(real, fake, kid_subsets=10)  # subset size min(1000, 200) = every sample
    assert whole["kid_std"] is None and whole["kid_mean"] > 0
    halves = fid_kid_from_features(real, fake, kid_subsets=10, kid_subset_size=100)
    assert halves["kid_std"] > 1e-6


def test_summary_warns_that_fid_on_few_samples_is_not_comparable(tmp_path):
    from unimodal.evaluation.suites import metric_notes

    metrics = {"fid": 30.0, "kid_mean": 0.01, "kid_std": None, "num_fid_real": 200, "num_fid_fake": 200}
    notes = metric_notes(metrics)
    assert len(notes) == 1 and "200 samples" in notes[0] and "published" in notes[0] and "kid_std" in notes[0]
    page = write_markdown_summary(metrics, {}, tmp_path / "summary.md", notes=notes).read_text()
    assert f"> {notes[0]}" in page and "| kid_std | n/a |" in page
    assert metric_notes({**metrics, "num_fid_real": 50_000, "num_fid_fake": 50_000}) == []
    assert metric_notes({"caption_bleu4": 0.4}) == []
