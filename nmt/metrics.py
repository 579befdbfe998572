"""Corpus scores through sacrebleu: cased, detokenized BLEU and chrF, each with its signature; and BLEU as
Multi30k publications compute it (lowercased, Moses-normalised and Moses-tokenized text on both sides), a
different metric whose numbers are not comparable with the detokenized ones."""

from __future__ import annotations

import functools
from pathlib import Path

from sacrebleu.metrics import BLEU, CHRF

PUBLISHED = "lc+moses-norm+moses-tok"  # the published-style pipeline, as its signature names it


def corpus_scores(
    hypotheses: list[str], references: list[str], lang: str | None = None
) -> dict[str, float | str]:
    """BLEU and chrF; with the references' `lang`, also the published-style BLEU (`bleu_published`)."""
    bleu_metric, chrf_metric = BLEU(), CHRF()
    bleu_score = bleu_metric.corpus_score(hypotheses, [references])
    chrf_score = chrf_metric.corpus_score(hypotheses, [references])
    scores = {
        "bleu": round(bleu_score.score, 2),
        "chrf": round(chrf_score.score, 2),
        "bleu_signature": str(bleu_metric.get_signature()),
        "chrf_signature": str(chrf_metric.get_signature()),
        "bleu_detail": str(bleu_score),
    }
    if lang:
        scores |= published_bleu(hypotheses, references, lang)
    return scores


def bleu(hypotheses: list[str], references: list[str]) -> float:
    return BLEU().corpus_score(hypotheses, [references]).score


def chrf(hypotheses: list[str], references: list[str]) -> float:
    return CHRF().corpus_score(hypotheses, [references]).score


def published_bleu(hypotheses: list[str], references: list[str], lang: str) -> dict[str, float | str]:
    """BLEU on the scale Multi30k papers report: both sides through `published_tokenize`, then sacrebleu with
    no tokenization of its own (what multi-bleu.perl computes on the dataset's tok/ references)."""
    metric = BLEU(tokenize="none", lowercase=True, force=True)  # lowercase: a no-op that the signature shows
    score = metric.corpus_score(published_tokenize(hypotheses, lang), [published_tokenize(references, lang)])
    return {
        "bleu_published": round(score.score, 2),
        "bleu_published_signature": f"{PUBLISHED}:{lang}|{metric.get_signature()}",
    }


def published_tokenize(lines: list[str], lang: str) -> list[str]:
    """The Multi30k references' own pipeline (scripts/task1-tokenize.sh in multi30k/dataset: Moses
    lowercase.perl | normalize-punctuation.perl -l LANG | tokenizer.perl -l LANG), through sacremoses with
    perl parity. The trailing newline is what the perl script sees at the end of every line: its rule that
    moves a period outside closing quotes needs it."""
    normalize, tokenize = _moses(lang)
    return [tokenize(normalize(line.lower() + "\n"), escape=True, return_str=True) for line in lines]


@functools.lru_cache(maxsize=None)
def _moses(lang: str):
    from sacremoses import MosesPunctNormalizer, MosesTokenizer

    return MosesPunctNormalizer(lang=lang, perl_parity=True).normalize, MosesTokenizer(lang=lang).tokenize


def language_of(path: str | Path) -> str | None:
    """The two-letter language code a corpus file's name ends with (test.de, test.de.gz), if it has one."""
    suffixes = [s.lstrip(".") for s in Path(path).suffixes]
    if suffixes and suffixes[-1] == "gz":
        suffixes.pop()
    last = suffixes[-1] if suffixes else ""
    return last if len(last) == 2 and last.isalpha() and last.islower() else None
