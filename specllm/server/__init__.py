"""`specllm serve`: an OpenAI-compatible HTTP server on the same Engine as `specllm generate`.

    schemas.py  request bodies (pydantic) and the response objects
    text.py     token bytes -> text, with stop strings (pure; no model)
    worker.py   the one thread that runs generations, fed by a bounded queue
    metrics.py  counters, rendered in Prometheus' text format
    app.py      the Starlette app: routes, answers (JSON or server-sent events)
    guard.py    the API key, request counters, errors in OpenAI's shape, no tracebacks

Needs the `server` extra: pip install 'specllm[server]'.
"""
