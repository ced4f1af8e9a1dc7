"""capexp: run, track, search and compare ClipCap-style image-captioning experiments."""

__version__ = "0.1.0"
__all__ = ["__version__"]
