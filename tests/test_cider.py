"""CIDEr-D in Python (the self-critical reward) against hand-computed values and pycocoevalcap, and its
tokenization against pycocoevalcap's Java PTB tokenizer."""

from __future__ import annotations

import math
import shutil

import pytest
from pycocoevalcap.cider.cider import Cider

from capexp.evaluation.cider import CiderD, ptb_words
from capexp.data import load_data
from capexp.evaluation.metrics import _ptb_tokenize, bleu4_per_caption
from capexp.paths import project_file
from capexp.spec.loading import load_spec

needs_java = pytest.mark.skipif(shutil.which("java") is None, reason="the PTB tokenizer is a Java program; install a JRE")

# Real Flickr8k captions that exercise every tokenization rule (clitics, quotes, brackets,
# abbreviations, web addresses, numbers, hyphens), verbatim from Flickr8k.token.txt.
HARD_CAPTIONS = [
    "A girl holding a horse 's lead behind a fire .",
    "Three people on ATV 's outside .",
    'Young boy with a black " ADHD " t-shirt nodding off',
    "We cannot see the face of the girl with the white T-shirt and blue jeans .",
    "A man in a blue shirt and jeans stands behind a sign that says \" Mark ' Mom ' Finley \" .",
    "A S.C.U.B.A. diver swims in deep blue water .",
    "A boy wears Mr. Potato head features .",
    "A man wearing a white shirt is wearing an at&t headphone at a game .",
    "its a distorted lens ( almost fish eye ) of a teenage boy skateboarding on a concrete block .",
    'A small child is playing with cut-outs of the letter " P. "',
    "A small child is sliding down a slip 'n' slide .",
    "A man talks on a cellphone , while standing in front of a Dale Earnhardt , Jr. , display .",
    "A black greyhound , with a green and white jersey ( # 7 ) is running on a track .",
    "A man in a statefarm.com hat and sunglasses .",
    "A person riding transit ( catching ? ) a paper bag .",
    "A crowd of people views newspaper covers in Washington D.C.",
    "a man wearing an orange U. Miami t-shirt playing tennis",
    "A little boy in a white shirt and jeans stands in an R.V.",
    "The dogs' owner doesn't see the 2 dogs ; they're running ... fast !",
]


def test_reward_of_a_reference_is_ten_and_of_an_unrelated_caption_zero() -> None:
    corpus = [[["a", "dog", "runs", "fast"]], [["the", "cat", "sleeps", "inside"]]]
    cider = CiderD(corpus)
    same, unrelated, short = cider.scores([["a", "dog", "runs", "fast"], ["the", "cat", "sleeps", "inside"],
                                           ["a", "dog", "runs"]], [0, 0, 0])
    assert same == pytest.approx(10.0)  # cosine 1 for each n = 1..4, no length penalty, times 10
    assert unrelated == 0.0
    assert short < same


def test_reward_of_a_partial_caption_matches_the_hand_computed_value() -> None:
    # "a dog" against "a dog runs", every n-gram in one image of two (idf log 2):
    # unigram cosine 2/sqrt(6), bigram 1/sqrt(2), no tri- or four-grams; lengths (bigram counts)
    # 1 and 2 give the Gaussian penalty exp(-1/72); CIDEr-D averages the four n and multiplies by 10.
    cider = CiderD([[["a", "dog", "runs"]], [["the", "cat", "sleeps"]]])
    expected = 10 / 4 * (2 / math.sqrt(6) + 1 / math.sqrt(2)) * math.exp(-1 / 72)
    assert cider.scores([["a", "dog"]], [0]) == [pytest.approx(expected)]
    # a repeated word is clipped to the reference's count: no reward for repeating it
    assert cider.scores([["a", "dog", "dog", "dog"]], [0])[0] < cider.scores([["a", "dog", "runs"]], [0])[0]


def test_corpus_score_equals_pycocoevalcap_cider() -> None:
    refs = [["a dog runs on the grass", "a brown dog is running", "the dog plays outside"],
            ["two children play in the snow", "kids playing in snow", "a child throws a snowball"],
            ["a man rides a bike down a hill", "a cyclist on a dirt path", "a person riding a bicycle"],
            ["a cat sleeps on a sofa", "a cat lying on the couch", "the cat is asleep"]]
    candidates = ["a dog runs", "a child plays in the snow", "a man rides a bike", "a dog on a sofa"]
    expected, per_image = Cider().compute_score({i: r for i, r in enumerate(refs)}, {i: [c] for i, c in enumerate(candidates)})
    cider = CiderD([[r.split() for r in image] for image in refs])
    assert cider.corpus_score([c.split() for c in candidates]) == pytest.approx(expected, rel=1e-12)
    assert cider.scores([c.split() for c in candidates], range(4)) == pytest.approx(list(per_image), rel=1e-12)


@needs_java
def test_python_tokenization_equals_the_java_ptb_tokenizer_on_hard_captions() -> None:
    java = _ptb_tokenize(HARD_CAPTIONS)
    assert [" ".join(ptb_words(c)) for c in HARD_CAPTIONS] == java


@needs_java
def test_python_tokenization_gives_pycocoevalcaps_cider_on_flickr8k_dev(shared_data) -> None:
    spec = load_spec(project_file("experiments", "flickr8k.json"), [f"data_paths.root={shared_data / 'flickr8k'}"])
    dev = load_data(spec).val.captions  # 1,000 images x 5 references
    sentences = [c for refs in dev for c in refs]
    java = _ptb_tokenize(sentences)
    assert [" ".join(ptb_words(s)) for s in sentences] == java
    # each image's first caption scored against its other four, as a captioner's output would be
    java_refs = {i: java[5 * i + 1 : 5 * i + 5] for i in range(len(dev))}
    java_cider, _ = Cider().compute_score(java_refs, {i: [java[5 * i]] for i in range(len(dev))})
    ours = CiderD([[ptb_words(r) for r in refs[1:]] for refs in dev]).corpus_score([ptb_words(refs[0]) for refs in dev])
    assert ours == pytest.approx(java_cider, rel=1e-12)


@needs_java
def test_per_caption_bleu4_tokenizes_as_the_coco_metrics_do() -> None:
    """The gallery's per-image BLEU-4 (Python tokenizer) is pycocoevalcap's BLEU-4 on the Java PTB tokenizer's text,
    for captions written with clitics and punctuation joined to their words."""
    from pycocoevalcap.bleu.bleu import Bleu

    n = len(HARD_CAPTIONS)
    predictions = [c.replace(" 's", "'s").replace(" n't", "n't").replace(" .", ".").replace(" ,", ",") for c in HARD_CAPTIONS]
    references = [[HARD_CAPTIONS[i], HARD_CAPTIONS[(i + 1) % n]] for i in range(n)]
    java = _ptb_tokenize(predictions + [r for refs in references for r in refs])
    res = {i: [java[i]] for i in range(n)}
    gts = {i: java[n + 2 * i : n + 2 * i + 2] for i in range(n)}
    _, per_caption = Bleu(4).compute_score(gts, res, verbose=0)
    assert bleu4_per_caption(predictions, references) == pytest.approx(per_caption[3], rel=1e-12)
