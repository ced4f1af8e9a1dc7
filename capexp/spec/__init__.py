"""Specs: the JSON file that describes one experiment.

`schema` holds the pydantic models (one per concern, every key with a default), loading with
`extends` and `--set`, and the messages a bad file gets; `checks` what `validate`, `run` and
`study` reject before any run exists.
"""
