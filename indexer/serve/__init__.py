"""The HTTP API (``bioclip-serve``) and the user's background servers that keep ``bioclip-search`` warm.

Nothing is imported here: the command line's client path (:mod:`indexer.serve.local`,
:mod:`indexer.serve.client`) must stay free of numpy, torch and FastAPI.

Modules: ``config`` (:class:`ServeConfig`, limits, keys), ``app`` (the FastAPI app),
``routes_search`` and ``routes_images`` (the endpoints), ``queries`` (a request -> the engine's
answer, shared with the command line), ``payload`` (results as JSON, shared with the command
line), ``models`` (typed requests and answers), ``errors`` (JSON errors with stable codes),
``guards`` (access log, size limit, API keys, rate limits), ``uploads`` (query picture checks),
``registry`` (the engines of one worker), ``runner`` (uvicorn), ``local`` (background servers)
and ``client`` (the standard-library client).
"""
