"""Scoring captions: the COCO metrics and BERTScore, CIDEr-D and the PTB tokenization in Python (one
tokenizer wherever Java's is not needed), `capexp evaluate` (a run's checkpoint scored on a held-out
split, logged back to the run) and human scores logged to their runs (`capexp score`)."""
