"""The depot status page: a static HTML page and its script, shipped as package data.

The page carries no data and no secret, so it is served without the token; its script asks
`/v1/status` every few seconds with `Authorization: Bearer <token>`. The technician gives the
token once, in the address's fragment (`/v1/page#token=...`, which the browser never sends
to the server nor puts in a Referer) or in the page's form; the script keeps it in the tab's
sessionStorage only and takes the fragment out of the address bar. Everything is drawn in
the browser (inline SVG): no CDN, no network beyond the terminal itself.
"""

from __future__ import annotations

from importlib import resources

_STATIC = resources.files("reader.daemon").joinpath("static")

PAGE_FILES: dict[str, tuple[str, bytes]] = {
    "/v1/page": ("text/html; charset=utf-8", _STATIC.joinpath("status.html").read_bytes()),
    "/v1/page/status.js": ("text/javascript; charset=utf-8", _STATIC.joinpath("status.js").read_bytes()),
}
"""Path → (content type, body) of every file of the page."""
