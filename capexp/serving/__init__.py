"""Captioning outside training: a folder of images (`folder`, `capexp caption`), the MLflow pyfunc
model each run logs (`pyfunc_model`, `register`: `capexp register`) and what a served model
accepts per request (`request_limits`)."""
