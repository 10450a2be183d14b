"""One image's bytes and pixels, and serving a collection's images safely.

- :mod:`indexer.media.localfs`: robust local files (a loop-safe sorted walk, safe reads);
- :mod:`indexer.media.read`: the bytes at a location (local file, tar member);
- :mod:`indexer.media.decode`: bytes -> upright RGB image, robustly; failures are values;
- :mod:`indexer.media.library`: a collection's images and thumbnails, served only from its own
  sources (what the app, and any other front end, shows).

Used by the build and by the search engine and its front ends alike; depends only on
:mod:`indexer.locations` and :mod:`indexer.store` (atomic files).
"""
