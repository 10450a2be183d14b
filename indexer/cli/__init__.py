"""The console scripts, one module each: ``index`` (``bioclip-index``, a group with one module per
subcommand in ``index/``), ``search`` (``bioclip-search``), ``app`` (``bioclip-app``), ``demo``
(``bioclip-demo``), and what they share in ``common``. The only package that imports click, and the
only place (with the app) where named exceptions become messages and exit codes. Heavy imports
(torch, open_clip, faiss) happen inside commands.
"""
