"""Specs: everything about the JSON file that describes one experiment, its keys with their defaults and
comments (`schema`), reading it with `extends`, `--set` and `$VAR` paths into one validated `Spec` with a
one-paragraph message for a bad file (`loading`), and what is refused before any run exists (`checks`)."""
