"""The API documentation pages, /docs (Swagger UI) and /redoc (ReDoc), served with no network at all.

FastAPI's own pages load their scripts from a CDN and render blank offline; here the assets are the
files the `fastapi-offline` package ships (Swagger UI, ReDoc, favicon), served under /static-docs by
the gateway itself, and a Content-Security-Policy keeps each page on this origin (ReDoc would load
its logo from a CDN; Swagger UI its validator badge: validatorUrl is off too). "Authorize" takes the
bearer key (the document's HTTPBearer scheme) and keeps it for the browser session. Imports
FastAPI's page templates and the package's static folder only.
See docs/DESIGN.md § Looking at an auction.
"""

from __future__ import annotations

from pathlib import Path

import fastapi_offline
from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.staticfiles import StaticFiles
from starlette.requests import Request
from starlette.responses import HTMLResponse

DOCS_ASSETS = Path(fastapi_offline.__file__).parent / "static"
ASSETS_URL = "/static-docs"
# validatorUrl None: Swagger UI would otherwise load a badge from an outside validator.
# Both pages: nothing from another origin. Inline script/style: FastAPI's page templates (Swagger's
# init script, ReDoc's styled-components); blob: the worker of ReDoc's search.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self' data:; connect-src 'self'; worker-src 'self' blob:; "
    "frame-ancestors 'none'; base-uri 'none'"
)
SWAGGER_PARAMETERS = {
    "persistAuthorization": True,
    "displayOperationId": True,
    "tryItOutEnabled": True,
    "validatorUrl": None,
}


def add_offline_docs(app: FastAPI) -> None:
    """/docs and /redoc (the app must be created with docs_url=None, redoc_url=None)."""
    app.mount(ASSETS_URL, StaticFiles(directory=DOCS_ASSETS), name="static-docs")

    def root(request: Request) -> str:
        return str(request.scope.get("root_path", ""))

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        base = root(request)
        page = get_swagger_ui_html(
            openapi_url=f"{base}{app.openapi_url}",
            title=f"{app.title} — Swagger UI",
            swagger_js_url=f"{base}{ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{base}{ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{base}{ASSETS_URL}/favicon.png",
            swagger_ui_parameters=SWAGGER_PARAMETERS,
        )
        page.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
        return page

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        base = root(request)
        page = get_redoc_html(
            openapi_url=f"{base}{app.openapi_url}",
            title=f"{app.title} — ReDoc",
            redoc_js_url=f"{base}{ASSETS_URL}/redoc.standalone.js",
            redoc_favicon_url=f"{base}{ASSETS_URL}/favicon.png",
            with_google_fonts=False,
        )
        page.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
        return page
