"""Admin routes that change the config: ``/api/channels``, ``/api/rules``, ``/api/keys``.

``GET`` lists what is live (secrets masked). ``POST`` adds or replaces one entry by ``name`` and
``DELETE`` removes one. A change is made under ``Gateway.write_lock`` on the config file's current
text (``smartproxy.config.file``), validated whole by the loader, written atomically, then
installed as a new snapshot — in that order, so the file and what runs never disagree; a refused
change leaves both untouched. Every attempt, refused or not, is one audit line.

Without a config file (the built-in default) changes are live but kept in memory only: the
response says ``"saved": false`` and a restart or reload returns to the default. Writing to
``./etc/smartproxy.yaml`` instead was rejected: it would silently create a file the next start
picks up, in whatever folder the gateway happened to run.

``POST /api/keys`` without ``key`` for a new name generates one: the file gets only its
``sha256:`` hash and the response shows the key this once (``api_key``); it is never shown again.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import secrets
from collections.abc import Callable, Iterable
from typing import Any

from aiohttp import web

from ..audit import Actor, config_diff, config_secrets, scrub
from ..config import file as cf
from ..config.kinds import API_KEYS, CHANNELS, RULES, Kind
from ..errors import BadRequest, ConfigError, GatewayError
from ..security.jwt import ADMIN_SUB, JwtVerifier
from ..state import GATEWAY, Gateway, Snapshot, keep_listener
from .limits import ADMIN_MAX_BODY, read_body

log = logging.getLogger("smartproxy.admin")

_ATTEMPTS = 3  # the file changed under us this often in a row: give up with 409
_NOT_SAVED = ("no config file: the change is live but not saved (a restart or reload returns to "
              "the built-in default); start with --config FILE to keep changes")


class ConfigRefused(BadRequest):
    """400 listing every problem; ``param`` is the path of the first (``channels[3].endpoint``)."""

    code = "invalid_config"

    def __init__(self, problems: Iterable[str]) -> None:
        self.problems = list(problems)
        first = self.problems[0] if self.problems else ""
        super().__init__("config refused, nothing changed: " + "; ".join(self.problems),
                         param=first.split(": ", 1)[0] or None)

    def body(self) -> dict[str, object]:
        out = super().body()
        out["error"]["problems"] = self.problems  # type: ignore[index]
        return out


class EditFailed(GatewayError):
    """An ``EditError`` as an answer (404 not found, 409 in use / file invalid, 500 unwritable)."""

    error_type = "invalid_request_error"

    def __init__(self, exc: cf.EditError, message: str) -> None:
        super().__init__(message, code=exc.code)
        self.status = exc.status
        if exc.status >= 500:
            self.error_type = "server_error"


def actor_of(request: web.Request) -> Actor:
    return Actor(sub=request.get(ADMIN_SUB), address=request.remote)


def _posted_secrets(posted: dict[str, Any]) -> list[str]:
    out = [str(posted.get(k) or "") for k in ("api_key", "key")]
    headers = posted.get("headers")
    return out + ([str(v) for v in headers.values()] if isinstance(headers, dict) else [])


def posted_problems(posted: Any) -> list[str]:
    """Problems the loader cannot see: the body's shape, and ``${`` in a value."""
    if not isinstance(posted, dict):
        return ["(body): must be a JSON object"]
    problems = []
    name = posted.get("name")
    if not isinstance(name, str) or not name.strip():
        problems.append("name: is required (a non-empty string)")

    def walk(value: Any, path: str) -> None:
        if isinstance(value, str) and "${" in value:
            problems.append(f"{path}: '${{' is expanded only in the config file; send the value")
        elif isinstance(value, dict):
            for k, v in value.items():
                walk(v, f"{path}.{k}")
        elif isinstance(value, list):
            for i, v in enumerate(value):
                walk(v, f"{path}[{i}]")

    for key, value in posted.items():
        walk(value, str(key))
    return problems


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        body = json.loads(await read_body(request, ADMIN_MAX_BODY) or b"null")
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise BadRequest("the body must be JSON") from None
    problems = posted_problems(body)
    if problems:
        raise ConfigRefused(problems)
    body["name"] = body["name"].strip()  # the loader strips names; look up what it will store
    return dict(body)


async def _apply(
    gw: Gateway, change: Callable[[str], cf.Edit]
) -> tuple[cf.Edit, Snapshot, JwtVerifier]:
    """Read, change, validate, write; redone when the file changed on disk meanwhile."""
    for _ in range(_ATTEMPTS):
        text = await asyncio.to_thread(gw.config_file.read)
        edit = await asyncio.to_thread(change, text)
        config = keep_listener(gw.snapshot.config, edit.config)
        snap = await asyncio.to_thread(Snapshot.build, config)
        verifier = gw.make_verifier(snap)  # a broken key file refuses the change, before writing
        try:
            await asyncio.to_thread(gw.config_file.write, edit.text, expected=text)
        except cf.FileChanged:
            continue
        return edit, snap, verifier
    raise cf.FileChanged("the config file kept changing while it was being edited; try again")


async def commit(
    request: web.Request,
    kind: Kind,
    action: str,
    target: str,
    change: Callable[[str], cf.Edit],
    secret_values: list[str],
) -> cf.Edit:
    """Make one change under the write lock, install it, and audit the outcome either way."""
    gw = request.config_dict[GATEWAY]
    actor = actor_of(request)
    async with gw.write_lock:
        hidden = secret_values + config_secrets(gw.snapshot.config)
        try:
            edit, snap, verifier = await _apply(gw, change)
        except ConfigError as exc:
            problems = [scrub(p, hidden) for p in exc.problems]
            _refused(gw, actor, action, target, "; ".join(problems))
            raise ConfigRefused(problems) from None
        except cf.EditError as exc:
            message = scrub(str(exc), hidden)
            _refused(gw, actor, action, target, message)
            raise EditFailed(exc, message) from None
        except Exception as exc:  # a bug: still one audit line, without the message's values
            _refused(gw, actor, action, target, f"internal error ({type(exc).__name__})")
            raise
        before = gw.snapshot.config
        gw.install(snap, verifier)
        gw.last_reload_error = None  # the file, as it is now, is what runs
        diff: dict[str, Any] = kind.diff(kind.get(edit.old_config, target),
                                         kind.get(edit.config, target))
        also = config_diff(before, keep_listener(before, edit.old_config, note=False))
        if also:  # hand edits of the file that this write made live as well
            diff["also_applied_from_file"] = also
        gw.audit.record(actor, action, target, ok=True, diff=diff)
    if gw.on_admin_change is not None:
        gw.on_admin_change()
    log.info("admin %s %r by %s (%s)", action, target, actor.sub,
             "saved" if gw.config_file.saved else "live only, no config file")
    return edit


def _refused(gw: Gateway, actor: Actor, action: str, target: str, reason: str) -> None:
    gw.audit.record(actor, action, target, ok=False, reason=reason)
    gw.refused(f"admin {action} {target!r} by {actor.sub}", reason)
    log.warning("admin %s %r by %s refused: %s", action, target, actor.sub, reason)


def _outcome(gw: Gateway, **fields: Any) -> dict[str, Any]:
    out = {**fields, "saved": gw.config_file.saved, "config_path": gw.config_path}
    if not gw.config_file.saved:
        out["warning"] = _NOT_SAVED
    return out


async def list_entries(request: web.Request, kind: Kind) -> web.Response:
    gw = request.config_dict[GATEWAY]
    config = gw.config
    return web.json_response({kind.section: [kind.view(o, config=config)
                                             for o in kind.items(config)]})


async def save_entry(request: web.Request, kind: Kind) -> web.Response:
    gw = request.config_dict[GATEWAY]
    single = kind.section[:-1]  # channel | rule | key
    try:
        posted = await _body(request)
        posted = kind.without_inherited(posted, gw.config)
    except (GatewayError, ConfigError) as exc:  # no entry to change: audited all the same
        reason = "; ".join(exc.problems) if isinstance(exc, ConfigError) else exc.message
        _refused(gw, actor_of(request), f"{single}.upsert", "", reason)
        if isinstance(exc, ConfigError):
            raise ConfigRefused(exc.problems) from None
        raise
    name = posted["name"]
    generated: list[str] = []
    candidate = "sk-gw-" + secrets.token_urlsafe(24)

    def change(text: str) -> cf.Edit:
        generated.clear()
        body = posted
        if kind is API_KEYS and posted.get("key") is None:
            plain, _ = cf.current_config(text, gw.config_path)
            if kind.find(plain, name) is None:
                body = {**posted, "key": "sha256:" + hashlib.sha256(candidate.encode()).hexdigest()}
                generated.append(candidate)
        return cf.upsert(text, kind, body, source=gw.config_path)

    edit = await commit(request, kind, f"{single}.upsert", name, change,
                        _posted_secrets(posted) + [candidate])
    shown = kind.view(kind.get(edit.config, name), config=edit.config)
    out = _outcome(gw, created=edit.created, **{single: shown})
    if generated:
        out["api_key"] = generated[0]  # the only time this key is shown whole
    return web.json_response(out, status=201 if edit.created else 200)


async def delete_entry(request: web.Request, kind: Kind) -> web.Response:
    name = request.match_info["name"]
    gw = request.config_dict[GATEWAY]
    await commit(request, kind, f"{kind.section[:-1]}.delete", name,
                 lambda text: cf.remove(text, kind, name, source=gw.config_path), [])
    return web.json_response(_outcome(gw, deleted=name))


# ----------------------------------------------------------------------------- the routes
# Each handler's docstring is its OpenAPI operation; schemas and examples: api/schemas.py.
async def get_channels(request: web.Request) -> web.Response:
    """The live channels; ``api_key`` and ``headers`` values masked.
    ---
    summary: List channels
    responses:
      '200':
        description: Every field with the value in effect (defaults included), secrets masked.
        content:
          application/json:
            schema: {$ref: '#/components/schemas/ChannelList'}
      '401': {$ref: '#/components/responses/AdminUnauthorized'}
    """
    return await list_entries(request, CHANNELS)


async def post_channel(request: web.Request) -> web.Response:
    """Add or replace one channel (by ``name``); live at once and saved to the config file.
    ---
    summary: Add or update a channel
    description: >-
      Replaces the whole entry. Leave out ``api_key`` (or send it back masked) to keep the stored
      key; unchanged fields keep their text in the file (``${VAR}`` stays ``${VAR}``).
    requestBody:
      required: true
      content:
        application/json:
          schema: {$ref: '#/components/schemas/Channel'}
    responses:
      '200': {$ref: '#/components/responses/ConfigChanged'}
      '201': {$ref: '#/components/responses/ConfigChanged'}
      '400': {$ref: '#/components/responses/ConfigRefused'}
      '401': {$ref: '#/components/responses/AdminUnauthorized'}
      '413': {$ref: '#/components/responses/TooLarge'}
      '409': {$ref: '#/components/responses/Conflict'}
    """
    return await save_entry(request, CHANNELS)


async def delete_channel(request: web.Request) -> web.Response:
    """Remove a channel; refused with 409 while rules name it.
    ---
    summary: Delete a channel
    responses:
      '200': {$ref: '#/components/responses/ConfigChanged'}
      '401': {$ref: '#/components/responses/AdminUnauthorized'}
      '404': {$ref: '#/components/responses/NotFound'}
      '409': {$ref: '#/components/responses/Conflict'}
    """
    return await delete_entry(request, CHANNELS)


async def get_rules(request: web.Request) -> web.Response:
    """The live routing rules, in file order.
    ---
    summary: List rules
    responses:
      '200':
        description: Rules as the config file holds them.
        content:
          application/json:
            schema: {$ref: '#/components/schemas/RuleList'}
      '401': {$ref: '#/components/responses/AdminUnauthorized'}
    """
    return await list_entries(request, RULES)


async def post_rule(request: web.Request) -> web.Response:
    """Add or replace one rule (by ``name``); a bad expression or unknown channel is a 400.
    ---
    summary: Add or update a rule
    requestBody:
      required: true
      content:
        application/json:
          schema: {$ref: '#/components/schemas/Rule'}
    responses:
      '200': {$ref: '#/components/responses/ConfigChanged'}
      '201': {$ref: '#/components/responses/ConfigChanged'}
      '400': {$ref: '#/components/responses/ConfigRefused'}
      '401': {$ref: '#/components/responses/AdminUnauthorized'}
      '413': {$ref: '#/components/responses/TooLarge'}
      '409': {$ref: '#/components/responses/Conflict'}
    """
    return await save_entry(request, RULES)


async def delete_rule(request: web.Request) -> web.Response:
    """Remove a rule.
    ---
    summary: Delete a rule
    responses:
      '200': {$ref: '#/components/responses/ConfigChanged'}
      '401': {$ref: '#/components/responses/AdminUnauthorized'}
      '404': {$ref: '#/components/responses/NotFound'}
      '409': {$ref: '#/components/responses/Conflict'}
    """
    return await delete_entry(request, RULES)


async def get_keys(request: web.Request) -> web.Response:
    """The gateway API keys by name, keys masked (``sk-...abcd``, ``sha256:...abcd``).
    ---
    summary: List API keys
    responses:
      '200':
        description: Keys and their limits; never a whole key.
        content:
          application/json:
            schema: {$ref: '#/components/schemas/ApiKeyList'}
      '401': {$ref: '#/components/responses/AdminUnauthorized'}
    """
    return await list_entries(request, API_KEYS)


async def post_key(request: web.Request) -> web.Response:
    """Add or replace one API key (by ``name``); without ``key`` a new name gets a generated key.
    ---
    summary: Add or update an API key
    description: >-
      Leave out ``key`` (or send it back masked) to keep the stored key. For a new name without
      ``key`` a random key is generated, stored as its sha256 hash, and returned once as
      ``api_key``.
    requestBody:
      required: true
      content:
        application/json:
          schema: {$ref: '#/components/schemas/ApiKey'}
    responses:
      '200': {$ref: '#/components/responses/ConfigChanged'}
      '201': {$ref: '#/components/responses/ConfigChanged'}
      '400': {$ref: '#/components/responses/ConfigRefused'}
      '401': {$ref: '#/components/responses/AdminUnauthorized'}
      '413': {$ref: '#/components/responses/TooLarge'}
      '409': {$ref: '#/components/responses/Conflict'}
    """
    return await save_entry(request, API_KEYS)


async def delete_key(request: web.Request) -> web.Response:
    """Remove an API key; its clients get 401 from the next request on.
    ---
    summary: Delete an API key
    responses:
      '200': {$ref: '#/components/responses/ConfigChanged'}
      '401': {$ref: '#/components/responses/AdminUnauthorized'}
      '404': {$ref: '#/components/responses/NotFound'}
      '409': {$ref: '#/components/responses/Conflict'}
    """
    return await delete_entry(request, API_KEYS)


def add_config_routes(app: web.Application) -> None:
    for path, get, post, delete in (
        ("/channels", get_channels, post_channel, delete_channel),
        ("/rules", get_rules, post_rule, delete_rule),
        ("/keys", get_keys, post_key, delete_key),
    ):
        app.router.add_get(path, get)
        app.router.add_post(path, post)
        app.router.add_delete(path + r"/{name:[\s\S]+}", delete)  # names may hold "/" (any text)
