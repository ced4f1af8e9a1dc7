"""The captioner: where image features become a caption, and the files a trained one lives in.

It owns the network (the mappers, `ClipCap`, `build_captioner`: the one way a spec becomes a model),
the checkpoint format and loading a checkpoint into a model ready to caption, the vocabulary cut to
the training captions, and decoding (greedy, beam search, sampling, ensembles).
"""
