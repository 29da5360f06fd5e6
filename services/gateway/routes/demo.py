"""/demo: the storefront demo page (FITROOM_DEMO=1 only). Plain HTML, CSS and JS from
services/gateway/static, served as files; the page itself talks to nothing but the public /v1 API,
with the API key typed into it, so it shows exactly what a retailer's storefront could do."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).resolve().parents[1] / "static"
# Only this origin's own files and the images the page makes from API answers (blob:); no CDN, no
# inline script: what the page runs is what is in the repository.
CSP = (
    "default-src 'self'; img-src 'self' blob: data:; connect-src 'self' blob:; style-src 'self'; "
    "script-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'"
)

router = APIRouter(include_in_schema=False)


@router.get("/demo")
def demo_page() -> FileResponse:
    return FileResponse(
        STATIC / "demo.html",
        media_type="text/html",
        headers={"Content-Security-Policy": CSP, "Cache-Control": "no-cache"},
    )


def install(app: FastAPI) -> None:
    app.include_router(router)
    app.mount("/demo/static", StaticFiles(directory=STATIC), name="demo-static")
