"""The explorer's routes: `/` is the page, `/explorer/*` its assets (package data in ./static).

The page is plain HTML, CSS and modern JavaScript (no library, no CDN, nothing fetched from outside
the gateway): it calls the public API only (`POST /auction`, `GET /auctions/{id}`,
`POST /auctions/{id}/resolve`, and for "What to bid" test auctions then `POST /calibration`) with the
key the user typed, kept in the tab's sessionStorage. The prefilled instances are a few of the
paper's (instances.json). Imports FastAPI's static files only.
See docs/DESIGN.md § Looking at an auction.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).parent / "static"
ASSETS_URL = "/explorer"

# The page talks to this origin only; a browser refuses anything else it might be tricked into loading.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)


def add_explorer(app: FastAPI) -> None:
    app.mount(ASSETS_URL, StaticFiles(directory=STATIC), name="explorer")

    @app.get("/", include_in_schema=False)
    async def explorer_page() -> FileResponse:
        return FileResponse(
            STATIC / "index.html",
            media_type="text/html",
            headers={"Content-Security-Policy": CONTENT_SECURITY_POLICY, "Cache-Control": "no-cache"},
        )
