"""The captioner: where a tensor becomes a caption.

`captioner` holds the mappers, `ClipCap` and the checkpoint format; `vocabulary` cuts the
decoder's vocabulary to the training captions; `decoding` holds greedy search, beam search and
sampling.
"""
