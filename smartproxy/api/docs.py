"""``/swagger.json`` (OpenAPI 3.0.3 from handler docstrings) and ``/swagger`` (local Swagger UI).

A handler is documented by YAML after a ``---`` line in its docstring: either the operation
itself, or a mapping from method (``get:``, ``post:``) to operation for a handler serving several.
Handlers without ``---`` are left out. Missing path parameters are declared as strings; an
operation without ``security``/``tags`` gets those of its prefix (``/v1/`` → API key,
``/api/`` → admin JWT, else none). Components come from :mod:`smartproxy.api.schemas`.

The UI is swagger-ui-bundle's local copy: the page loads only same-origin files and says so in
its Content-Security-Policy; Swagger's online validator is switched off (it would fetch a badge).
"""

from __future__ import annotations

import copy
import html
import inspect
import json
import re
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml
from aiohttp import hdrs, web
from aiohttp.abc import AbstractView
from aiohttp.web_urldispatcher import PrefixedSubAppResource, StaticResource, UrlDispatcher
from apispec import APISpec
from apispec.yaml_utils import PATH_KEYS, load_yaml_from_docstring
from swagger_ui_bundle import swagger_ui_path

from . import schemas

Json = dict[str, Any]

SPEC_PATH = "/swagger.json"
UI_PATH = "/swagger"
ASSET_PREFIX = "/swagger/static/"
INIT_SCRIPT = "smartproxy-init.js"
# Only these files of the bundle are served (its index.html and initializer point at petstore).
ASSETS = frozenset(
    {
        "swagger-ui.css",
        "swagger-ui.css.map",
        "swagger-ui-bundle.js",
        "swagger-ui-bundle.js.map",
        "favicon-16x16.png",
        "favicon-32x32.png",
    }
)
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
    "frame-ancestors 'none'"
)

# (path prefix, default tag, default security) in order; the first match wins.
PREFIX_DEFAULTS: tuple[tuple[str, str, list[dict[str, list[str]]]], ...] = (
    ("/v1/", "proxy", [{"apiKey": []}, {"apiKeyHeader": []}]),
    ("/api/", "admin", [{"adminJWT": []}]),
    ("/", "ops", []),
)

_PATH_PARAM = re.compile(r"\{([^}:]+)")
_SKIPPED_METHODS = frozenset({hdrs.METH_HEAD, hdrs.METH_OPTIONS})

Handler = Callable[..., Any]


def iter_routes(router: UrlDispatcher) -> Iterator[tuple[str, str, Handler]]:
    """(path, METHOD, handler) of every route, sub-apps included.

    aiohttp rewrites a sub-app's resources with its prefix when it is added, so their
    ``canonical`` is already the full path; recursing must not add the prefix again.
    """
    for resource in router.resources():
        if isinstance(resource, PrefixedSubAppResource):  # MatchedSubAppResource too
            sub_app = resource.get_info()["app"]
            yield from iter_routes(sub_app.router)
            continue
        if isinstance(resource, StaticResource):
            continue
        for route in resource:
            handler = route.handler
            if route.method == hdrs.METH_ANY and _is_view(handler):
                for method in sorted(hdrs.METH_ALL - _SKIPPED_METHODS):
                    view_method = getattr(handler, method.lower(), None)
                    if view_method is not None:
                        yield resource.canonical, method, view_method
            elif route.method not in _SKIPPED_METHODS:
                yield resource.canonical, route.method, handler


def _is_view(handler: object) -> bool:
    return inspect.isclass(handler) and issubclass(handler, AbstractView)


def operation_of(handler: Handler, method: str) -> Json | None:
    """The OpenAPI operation in ``handler``'s docstring for ``method``, or None."""
    doc = inspect.getdoc(handler)
    if not doc:
        return None
    try:
        data = load_yaml_from_docstring(doc)
    except yaml.YAMLError as exc:
        name = getattr(handler, "__qualname__", repr(handler))
        raise ValueError(f"bad OpenAPI YAML in the docstring of {name}: {exc}") from exc
    if not isinstance(data, dict) or not data:
        return None
    if PATH_KEYS & data.keys():
        operation = data.get(method.lower())
        return dict(operation) if isinstance(operation, dict) else None
    return data


def _complete(path: str, operation: Json) -> Json:
    declared = {p.get("name") for p in operation.get("parameters", []) if p.get("in") == "path"}
    for name in _PATH_PARAM.findall(path):
        if name not in declared:
            operation.setdefault("parameters", []).append(
                {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            )
    for prefix, tag, security in PREFIX_DEFAULTS:
        if path.startswith(prefix):
            operation.setdefault("tags", [tag])
            if security:
                operation.setdefault("security", copy.deepcopy(security))
            break
    return operation


def build_spec(app: web.Application, *, title: str, version: str, description: str = "") -> Json:
    """The OpenAPI document of every documented route of ``app`` and its sub-apps."""
    info = {"description": description} if description else {}
    spec = APISpec(title=title, version=version, openapi_version="3.0.3", info=info)
    # Copies: apispec resolves references in place, and the module's dicts share sub-dicts.
    for name, schema in copy.deepcopy(schemas.SCHEMAS).items():
        spec.components.schema(name, schema)
    for name, example in copy.deepcopy(schemas.EXAMPLES).items():
        spec.components.example(name, example)
    for name, response in copy.deepcopy(schemas.RESPONSES).items():
        spec.components.response(name, response)
    for name, scheme in copy.deepcopy(schemas.SECURITY_SCHEMES).items():
        spec.components.security_scheme(name, scheme)
    paths: dict[str, Json] = {}
    for path, method, handler in iter_routes(app.router):
        operation = operation_of(handler, method)
        if operation is not None:
            paths.setdefault(path, {})[method.lower()] = _complete(path, operation)
    for path in sorted(paths):
        spec.path(path=path, operations=paths[path])
    return spec.to_dict()


def operations_without_examples(spec: Mapping[str, Any]) -> list[str]:
    """``"METHOD path"`` of operations whose request body or a 2xx answer shows no example."""
    components = spec.get("components", {})
    missing = []
    for path, operations in spec.get("paths", {}).items():
        for method, operation in operations.items():
            if method not in PATH_KEYS:
                continue
            bodies = [operation.get("requestBody", {})]
            responses = operation.get("responses", {})
            bodies += [r for code, r in responses.items() if str(code).startswith("2")]
            if not all(_has_example(_deref(b, components), components) for b in bodies):
                missing.append(f"{method.upper()} {path}")
    return missing


def _deref(obj: Any, components: Mapping[str, Any]) -> Any:
    ref = obj.get("$ref") if isinstance(obj, dict) else None
    if not isinstance(ref, str) or not ref.startswith("#/components/"):
        return obj
    kind, _, name = ref.removeprefix("#/components/").partition("/")
    return components.get(kind, {}).get(name, {})


def _has_example(body: Mapping[str, Any], components: Mapping[str, Any]) -> bool:
    for media in body.get("content", {}).values():
        schema = _deref(media.get("schema", {}), components)
        if not ("example" in media or "examples" in media or "example" in schema):
            return False
    return True


_INDEX = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title}</title>
<link rel="stylesheet" href="{assets}swagger-ui.css">
<link rel="icon" type="image/png" href="{assets}favicon-32x32.png" sizes="32x32">
<link rel="icon" type="image/png" href="{assets}favicon-16x16.png" sizes="16x16">
<style>body {{ margin: 0; background: #fafafa; }}</style>
</head>
<body>
<div id="swagger-ui"></div>
<script src="{assets}swagger-ui-bundle.js"></script>
<script src="{assets}{init}"></script>
</body>
</html>
"""

# Kept out of the page so that the CSP can forbid inline scripts.
_INIT_JS = (
    'window.addEventListener("load", function () {\n'
    "  window.ui = SwaggerUIBundle({\n"
    f"    url: {json.dumps(SPEC_PATH)},\n"
    """    dom_id: "#swagger-ui",
    deepLinking: true,
    validatorUrl: null,
    presets: [SwaggerUIBundle.presets.apis],
    plugins: [SwaggerUIBundle.plugins.DownloadUrl],
    layout: "BaseLayout"
  });
});
"""
)


class _Docs:
    """The handlers; the spec is built on first request, when every sub-app is in place."""

    def __init__(self, app: web.Application, title: str, version: str, description: str) -> None:
        self._app = app
        self._meta = {"title": title, "version": version, "description": description}
        self._spec: bytes | None = None
        self._index = _INDEX.format(
            title=html.escape(title), assets=ASSET_PREFIX, init=INIT_SCRIPT
        ).encode()
        self._dir = Path(swagger_ui_path)

    async def spec(self, request: web.Request) -> web.Response:
        """The OpenAPI document.
        ---
        summary: This OpenAPI document
        responses:
          "200":
            description: OpenAPI 3.0 document of every endpoint
            content:
              application/json:
                schema: {type: object}
                example: {openapi: 3.0.3, info: {title: SmartProxy, version: 0.1.0}, paths: {}}
        """
        if self._spec is None:
            self._spec = json.dumps(build_spec(self._app, **self._meta)).encode()
        return web.Response(body=self._spec, content_type="application/json")

    async def index(self, request: web.Request) -> web.Response:
        """Swagger UI.
        ---
        summary: Swagger UI for this document, served from local files
        responses:
          "200":
            description: HTML page
            content:
              text/html:
                schema: {type: string}
                example: "<!DOCTYPE html><html>...</html>"
        """
        return web.Response(
            body=self._index,
            content_type="text/html",
            charset="utf-8",
            headers={"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff"},
        )

    async def index_slash(self, request: web.Request) -> web.Response:
        # No YAML: the document lists the page once, under /swagger.
        return await self.index(request)

    async def asset(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        headers = {"Cache-Control": "public, max-age=86400", "X-Content-Type-Options": "nosniff"}
        if name == INIT_SCRIPT:
            return web.Response(text=_INIT_JS, content_type="text/javascript", headers=headers)
        if name not in ASSETS:  # a whitelist, so no path can leave the bundle's folder
            raise web.HTTPNotFound()
        return web.FileResponse(self._dir / name, headers=headers)


def setup_docs(
    app: web.Application,
    *,
    title: str,
    version: str,
    description: str = "",
    root: web.Application | None = None,
) -> None:
    """Serve ``/swagger.json``, ``/swagger`` (and ``/swagger/``) and the UI's files on ``app``.

    The document covers ``root`` (default: ``app``) and all its sub-apps, so pass the root app
    as ``root`` when ``app`` is itself a sub-app (e.g. the ops app added with ``add_domain``).
    """
    docs = _Docs(root if root is not None else app, title, version, description)
    app.router.add_get(SPEC_PATH, docs.spec)
    app.router.add_get(UI_PATH, docs.index)
    app.router.add_get(UI_PATH + "/", docs.index_slash)
    app.router.add_get(ASSET_PREFIX + "{name}", docs.asset)
