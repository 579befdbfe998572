"""Scores: the published-style BLEU's pipeline reproduces the Multi30k references' own tokenization, and its
score behaves as BLEU on lowercased Moses tokens should."""

from __future__ import annotations

import gzip

import pytest
from sacrebleu.metrics import BLEU

from nmt.metrics import corpus_scores, language_of, published_bleu, published_tokenize

from conftest import SHARED

TOK = sorted((SHARED / "tok").glob("*.lc.norm.tok.*")) if SHARED.is_dir() else []


@pytest.mark.skipif(not TOK, reason="no Multi30k mirror with tok/ beside the checkout")
def test_the_pipeline_reproduces_the_datasets_tokenized_references():
    """Every line of every file in tok/ (val, test_2016_flickr, test_2017_flickr; en, de, fr, cs)."""
    differing = {}
    for path in TOK:
        split, lang = path.name.split(".lc.norm.tok.")
        raw = gzip.open(SHARED / f"{split}.{lang}.gz", "rt", encoding="utf-8").read().splitlines()
        ours = published_tokenize(raw, lang)
        theirs = path.read_text(encoding="utf-8").splitlines()
        assert len(ours) == len(theirs) == len(raw)
        differing[path.name] = sum(a != b for a, b in zip(ours, theirs))
    assert len(differing) == 11 and differing == dict.fromkeys(differing, 0)


def test_published_tokenization_follows_moses():
    line = 'Ein Mann hält ein Schild: "What\'s gayer than tea."'
    # lowercased; the period moved outside the quotes (normalize-punctuation.perl -l de); escaped tokens
    assert published_tokenize([line], "de") == [
        "ein mann hält ein schild : &quot; what &apos; s gayer than tea &quot; ."
    ]
    assert published_tokenize(["Une femme jette un coup d’œil."], "fr") == [
        "une femme jette un coup d &quot; œil ."  # normalize-punctuation.perl turns this ’ into a quote
    ]


def test_published_bleu_is_case_blind_and_tokenizes_both_sides():
    refs = ["Ein Hund rennt über die Wiese.", "Zwei Männer, die Fußball spielen."]
    hyps = ["ein hund rennt über eine wiese .", "ZWEI MÄNNER, DIE FUSSBALL SPIELEN."]
    score = published_bleu(hyps, refs, "de")
    tokens = published_tokenize(refs, "de")
    assert published_bleu(refs, refs, "de")["bleu_published"] == 100.0
    assert score["bleu_published"] == round(
        BLEU(tokenize="none").corpus_score(published_tokenize(hyps, "de"), [tokens]).score, 2
    )
    assert score["bleu_published_signature"].startswith("lc+moses-norm+moses-tok:de|nrefs:1|case:lc|")
    assert "tok:none" in score["bleu_published_signature"]


def test_corpus_scores_add_the_published_style_only_with_a_language():
    hyps, refs = ["Ein Hund rennt."], ["Ein Hund läuft."]
    assert "bleu_published" not in corpus_scores(hyps, refs)
    both = corpus_scores(hyps, refs, "de")
    assert both["bleu"] == corpus_scores(hyps, refs)["bleu"] and "bleu_published" in both


@pytest.mark.parametrize(
    "path, lang",
    [
        ("test.de", "de"),
        ("data/test_2016_flickr.en.gz", "en"),
        ("ref.txt", None),
        ("ref", None),
        ("a.DE", None),
    ],
)
def test_language_of_a_file_name(path, lang):
    assert language_of(path) == lang
