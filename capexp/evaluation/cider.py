"""CIDEr-D in Python, fast enough to be a training reward, and the PTB tokenization it needs.

`ptb_words` splits a caption the way pycocoevalcap's Stanford PTB tokenizer (a Java program)
does for English captions, without starting Java: lower case, clitics (`'s`, `n't`) and
punctuation split off, punctuation tokens dropped. `CiderD` is pycocoevalcap's CIDEr-D (n-grams
1-4, tf-idf vectors, clipped overlap, a Gaussian length penalty with sigma 6, times 10) with its
document frequencies taken once from a fixed reference corpus (the training references, for
self-critical training) and each image's reference vectors computed once, so a reward costs only
the candidate's own n-grams.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence

__all__ = ["ptb_words", "CiderD"]

_N = 4
_SIGMA = 6.0
# pycocoevalcap drops these tokens after PTB tokenization
_PUNCTUATION = frozenset(["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--",
                          "...", ";"])
_TOKEN = re.compile(
    r"\d+(?:[.,]\d+)+"  # numbers with separators: 1,000 and 3.5
    r"|[a-z0-9]+(?:\.[a-z0-9]+)*\.(?:com|org|net|edu)\b"  # web addresses
    r"|(?:[a-z]\.)+(?![a-z])|(?:mr|mrs|ms|dr|jr|sr|st|vs|etc)\.(?![a-z])"  # d.c., u., mr.: abbreviations keep the period
    r"|'(?:s|re|ve|ll|m|d)\b|n't\b|'n'"  # clitics already split off, as Flickr8k writes them
    r"|[a-z0-9]+(?:[-'/][a-z0-9]+)*'?"  # words, hyphenated or with inner apostrophes, possessive s'
    r"|\.\.\.|--|[^\sa-z0-9]",  # punctuation and other symbols, one by one
)
_CLITIC = re.compile(r"^(.+?)(n't|'s|'re|'ve|'ll|'m|'d)$")
_SPLIT = {"cannot": ["can", "not"], "gonna": ["gon", "na"], "wanna": ["wan", "na"], "gotta": ["got", "ta"],
          "(": ["-lrb-"], ")": ["-rrb-"], "[": ["-lsb-"], "]": ["-rsb-"], "{": ["-lcb-"], "}": ["-rcb-"]}  # not dropped: -lowerCase

Vector = tuple[list[dict[tuple[str, ...], float]], list[float], int]  # per-n tf-idf, per-n norm, length


def ptb_words(text: str) -> list[str]:
    """`text` as pycocoevalcap's PTB tokenization gives it: lower-case tokens, punctuation removed."""
    words: list[str] = []
    for token in _TOKEN.findall(text.lower()):
        match = _CLITIC.match(token)
        if token in _SPLIT:
            parts = _SPLIT[token]
        elif match:  # dog's -> dog 's, don't -> do n't
            parts = [match.group(1), match.group(2)]
        elif token.endswith("'") and not token.startswith("'"):  # dogs' -> dogs '
            parts = [token[:-1], "'"]
        else:
            parts = [token]
        words += [p for p in parts if p not in _PUNCTUATION and p != '"']  # " becomes `` or '', both dropped
    return words


def _ngrams(words: Sequence[str]) -> Counter[tuple[str, ...]]:
    return Counter(tuple(words[i : i + n]) for n in range(1, _N + 1) for i in range(len(words) - n + 1))


class CiderD:
    """CIDEr-D of candidates against fixed reference sets, with document frequencies from `corpus`.

    `corpus` holds one list of tokenized references per image (`ptb_words` of each). Built on
    the evaluated set's own references, it gives pycocoevalcap's `Cider` score; built on the
    training references, it is the self-critical reward of Rennie et al. (2017).
    """

    def __init__(self, corpus: Sequence[Sequence[Sequence[str]]]) -> None:
        self.document_frequency: Counter[tuple[str, ...]] = Counter()
        for refs in corpus:
            self.document_frequency.update({gram for ref in refs for gram in _ngrams(ref)})
        self.log_images = math.log(float(len(corpus)))
        self._refs: list[list[Vector]] = [[self._vector(_ngrams(ref)) for ref in refs] for refs in corpus]

    def _vector(self, counts: Counter[tuple[str, ...]]) -> Vector:
        vec: list[dict[tuple[str, ...], float]] = [{} for _ in range(_N)]
        norm = [0.0] * _N
        length = 0
        for gram, tf in counts.items():
            n = len(gram) - 1
            weight = tf * (self.log_images - math.log(max(1.0, self.document_frequency[gram])))
            vec[n][gram] = weight
            norm[n] += weight * weight
            if n == 1:  # pycocoevalcap counts bigrams as the length; kept for identical scores
                length += tf
        return vec, [math.sqrt(x) for x in norm], length

    def _score(self, candidate: Vector, refs: list[Vector]) -> float:
        vec, norm, length = candidate
        total = 0.0
        for ref_vec, ref_norm, ref_length in refs:
            penalty = math.exp(-((length - ref_length) ** 2) / (2 * _SIGMA**2))
            for n in range(_N):
                ref_n = ref_vec[n]
                overlap = sum(min(w, ref_n[g]) * ref_n[g] for g, w in vec[n].items() if g in ref_n)
                if norm[n] and ref_norm[n]:
                    overlap /= norm[n] * ref_norm[n]
                total += overlap * penalty
        return total / _N / len(refs) * 10.0

    def scores(self, candidates: Sequence[Sequence[str]], images: Sequence[int]) -> list[float]:
        """CIDEr-D of each tokenized candidate against the references of `corpus[images[i]]`."""
        return [self._score(self._vector(_ngrams(words)), self._refs[image]) for words, image in zip(candidates, images)]

    def corpus_score(self, candidates: Sequence[Sequence[str]]) -> float:
        """Mean CIDEr-D of one candidate per corpus image, in corpus order (pycocoevalcap's `Cider`)."""
        values = self.scores(candidates, range(len(candidates)))
        return sum(values) / len(values)
