"""Scoring captions: the COCO metrics and BERTScore (`metrics`), CIDEr-D in Python (`cider`),
`capexp evaluate` (`evaluate`: a run's checkpoint scored on a held-out split) and human scores
logged to their runs (`human_scores`, `capexp score`)."""
