"""`capexp gallery`: every model's caption of the same images on one self-contained HTML page (thumbnails
embedded, sorting and filtering in inline JavaScript: no server, no network), with per-image scores when
the images have references, and the human-scoring sheet `capexp score` reads back; both logged to the
runs as `gallery/` artifacts."""

from capexp.gallery.build import METRICS, SPLITS, Gallery, Model, build_gallery, write_sheet
from capexp.gallery.make import ARTIFACT_GALLERY, GalleryFiles, make_gallery
from capexp.gallery.page import render

__all__ = ["METRICS", "SPLITS", "Model", "Gallery", "build_gallery", "write_sheet", "render", "ARTIFACT_GALLERY",
           "GalleryFiles", "make_gallery"]
