"""The REST gateway retailers call: `fitroom serve`, in embedded mode (pipeline threads in this
process, SQLite) or distributed mode (Celery chains to stage workers, Redis; services/distributed).

Where things are:
    app.py        create_app(): routes, error envelope, body limit, metrics middleware, lifespan
    routes/       one module per resource: tryon, batches, persons, garments, shoppers (erasure),
                  ops (health, metrics), demo (the /demo page, FITROOM_DEMO=1 only)
    deps.py       FastAPI dependencies: auth (API key -> tenant), path ids, request bodies
    inputs.py     JSON / multipart bodies -> submissions; uploads, data URLs and URLs -> checked images
    service.py    what the routes do: submit try-ons and batches (idempotency, inputs, queue), register
                  garments and persons, erase
    runtime.py    Gateway: the parts wired for the configured mode, start/stop, readiness, retention, reaper
    jobs.py       JobStore and GarmentRegistry (protocols) with their SQLite versions
    persons.py    PersonRegistry and BatchStore (registered photos, batches) with their SQLite versions;
                  settle_batch, which ends a batch with its last job
    redis_persons.py  their Redis versions
    static/       the demo page: plain HTML, CSS and JS, and two sample photos
    redis_state.py  the Redis versions of the job store, garment registry and API keys (distributed mode)
    queue.py      JobQueue (protocol) and ThreadQueue, the bounded in-process one (CeleryQueue: services/distributed)
    worker.py     JobExecutor: one job through services.pipeline; the pieces the Celery tasks share
    webhooks.py   signing, verification, the dispatcher and the SQLite outbox with retries
    redis_webhooks.py  the Redis outbox: deliveries shared by every replica through leased claims
    fetch.py      outbound HTTP for untrusted URLs: the SSRF guard
    storage.py    per-tenant view of the artifact store and the key layout in it
    keys.py, db.py, metrics.py, middleware.py, errors.py, schemas.py, cli.py
See docs/API.md for the API itself.
"""
