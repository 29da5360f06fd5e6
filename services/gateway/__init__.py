"""The REST gateway retailers call (issue 6): `fitroom serve` runs it with the embedded pipeline.

Where things are:
    app.py        create_app(): routes, error envelope, body limit, metrics middleware, lifespan
    routes/       one module per resource: tryon, garments, shoppers (erasure), ops (health, metrics)
    deps.py       FastAPI dependencies: auth (API key -> tenant), path ids, request bodies
    inputs.py     JSON / multipart bodies -> submissions; uploads, data URLs and URLs -> checked images
    service.py    what the routes do: submit (idempotency, inputs, queue), register garments, erase
    runtime.py    Gateway: the parts wired for embedded mode, start/stop, readiness, retention
    jobs.py       JobStore and GarmentRegistry (the seams for Redis) with their SQLite versions
    queue.py      JobQueue (the seam for Celery) and ThreadQueue, the bounded in-process one
    worker.py     JobExecutor: one job through services.pipeline, stage by stage
    webhooks.py   signing, verification, the SQLite outbox with retries
    fetch.py      outbound HTTP for untrusted URLs: the SSRF guard
    storage.py    per-tenant view of the artifact store and the key layout in it
    keys.py, db.py, metrics.py, middleware.py, errors.py, schemas.py, cli.py
See docs/API.md for the API itself.
"""
