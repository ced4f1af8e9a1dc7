"""Captioning outside training: every image of a folder captioned by any models into one CSV
(`capexp caption`), each run's best checkpoint as an MLflow pyfunc model that `mlflow models serve` runs,
registering it (`capexp register`), and what a served model accepts per request."""
