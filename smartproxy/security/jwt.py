"""Admin authentication: JWT verification and minting, and the ``/api`` middleware (contract §6).

``JwtVerifier`` is built from a ``JwtConfig`` once per config snapshot; key files are read then, so
a request never touches the disk. Every failure raises ``AdminAuthError`` whose ``reason`` names
the failed check for the log and metrics; the HTTP body stays generic so a caller cannot learn
which check to work on.

Algorithm safety: the token's own ``alg`` header only *selects* among the algorithms the operator
configured, and each configured algorithm is bound to the one key of its family (HS* -> secret,
RS*/ES* -> public key) at load. ``none`` is never configurable and an HS token can never be
checked against the public key (the classic key-type confusion).
"""

from __future__ import annotations

import logging
import secrets
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from ..config import Config, JwtConfig
from ..errors import AuthenticationFailed, ConfigError

if TYPE_CHECKING:
    import jwt as pyjwt

log = logging.getLogger(__name__)

# aiohttp >= 3.12 warns on plain-string request keys; these typed keys are named as in the spec.
ADMIN_CLAIMS = web.RequestKey("admin_claims", dict[str, Any])
ADMIN_SUB = web.RequestKey("admin_sub", str)
# Contract §6: signature, iss, aud, exp. ``sub`` names who acted in the audit log when present
# (the tokens the gateway mints always carry it); a token without one is audited as sub null.
REQUIRED_CLAIMS = ["exp", "iss", "aud"]
MAX_TOKEN_LENGTH = 8192  # longer is not a token we minted; refuse before parsing
GENERIC_MESSAGE = "invalid or expired admin token"
MISSING_MESSAGE = "missing bearer token"
_CFG = "security.auth.jwt"


class AdminAuthError(Exception):
    """An admin token was refused. ``reason`` is a fixed, short label safe for logs and metrics."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason} ({detail})" if detail else reason)
        self.reason = reason
        self.detail = detail


def generate_secret() -> str:
    """A fresh random HS256 secret (256 bits) for a gateway started without one."""
    return secrets.token_urlsafe(32)


def needs_generated_secret(cfg: JwtConfig) -> bool:
    """True when HS* is configured but no secret is: the app must generate one at start."""
    return not cfg.secret and any(a.startswith("HS") for a in cfg.algorithms)


def _read_pem(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError([f"{_CFG}.{what}: cannot read {path}: {exc.strerror or exc}"]) from exc


def _load_public_key(path: str) -> Any:
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    data = _read_pem(path, "public_key_file")
    try:
        if b"-----BEGIN CERTIFICATE-----" in data:
            return x509.load_pem_x509_certificate(data).public_key()
        return load_pem_public_key(data)
    except ValueError as exc:
        raise ConfigError(
            [f"{_CFG}.public_key_file: {path} is not a PEM public key or certificate"]
        ) from exc


def _load_private_key(path: str) -> Any:
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    data = _read_pem(path, "private_key_file")
    try:
        return load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(
            [f"{_CFG}.private_key_file: {path} is not an unencrypted PEM private key"]
        ) from exc


def _bind(alg: str, key: Any, what: str) -> tuple[Any, bool]:
    """Check ``key`` suits ``alg`` (type, curve); returns (prepared key, key-is-short)."""
    import jwt as pyjwt
    from jwt.algorithms import get_default_algorithms

    algorithm = get_default_algorithms()[alg]
    try:
        prepared = algorithm.prepare_key(key)
    except (pyjwt.InvalidKeyError, TypeError, ValueError) as exc:
        raise ConfigError([f"{_CFG}.{what}: this key cannot be used with {alg}: {exc}"]) from exc
    short = algorithm.check_key_length(prepared)
    if short:
        # Warn once here instead of PyJWT warning on every request.
        log.warning("%s.%s: %s", _CFG, what, short)
    return prepared, bool(short)


# An HMAC secret is checked here as PyJWT's HMAC key preparation checks it (not an asymmetric
# key pasted by mistake; long enough), so that loading a config with HS* only does not import
# PyJWT and the cryptography package it loads: ~8 MB of every worker that never sees an admin
# token. PyJWT prepares the secret again at each verification.
_HS_MIN_BYTES = {"HS256": 32, "HS384": 48, "HS512": 64}  # RFC 7518 §3.2: the hash's output size
_NOT_A_SECRET = (b"ssh-ed25519", b"ssh-rsa", b"ssh-dss", b"ecdsa-sha2-nistp")


def _check_secret(alg: str, secret: bytes) -> tuple[bytes, bool]:
    """Refuse an asymmetric key or certificate as ``alg``'s secret; returns (secret,
    secret-is-short), logging a short one once."""
    if b"-----BEGIN " in secret or secret.startswith(_NOT_A_SECRET):
        raise ConfigError([f"{_CFG}.secret: this key cannot be used with {alg}: it is an "
                           "asymmetric key or certificate, not an HMAC secret"])
    need = _HS_MIN_BYTES.get(alg, 64)
    if len(secret) >= need:
        return secret, False
    # Warn once here instead of PyJWT warning on every request.
    log.warning("%s.secret: the HMAC key is %d bytes long, below the minimum recommended "
                "length of %d bytes for %s (RFC 7518 section 3.2)", _CFG, len(secret), need, alg)
    return secret, True


@contextmanager
def _quiet(short_key: bool) -> Iterator[None]:
    """Silence PyJWT's per-call short-key warning for a key we already warned about at load."""
    if not short_key:
        yield
        return
    from jwt.warnings import InsecureKeyLengthWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecureKeyLengthWarning)
        yield


def _reason(exc: pyjwt.PyJWTError) -> AdminAuthError:
    """Translate PyJWT's exception into our fixed reasons (subclasses before their bases)."""
    import jwt as pyjwt

    if isinstance(exc, pyjwt.ExpiredSignatureError):
        return AdminAuthError("expired")
    if isinstance(exc, pyjwt.InvalidAudienceError):
        return AdminAuthError("wrong audience")
    if isinstance(exc, pyjwt.InvalidIssuerError):
        return AdminAuthError("wrong issuer")
    if isinstance(exc, pyjwt.InvalidSignatureError):
        return AdminAuthError("bad signature")
    if isinstance(exc, pyjwt.InvalidAlgorithmError):
        return AdminAuthError("algorithm not allowed")
    if isinstance(exc, pyjwt.MissingRequiredClaimError):
        return AdminAuthError("malformed", f"missing {exc.claim} claim")
    if isinstance(exc, pyjwt.ImmatureSignatureError):
        return AdminAuthError("malformed", "not yet valid")
    if isinstance(exc, pyjwt.InvalidKeyError):
        return AdminAuthError("bad signature", "key does not fit the token")
    # PyJWT's own messages can quote token parts; we keep only the exception's class name.
    return AdminAuthError("malformed", type(exc).__name__)


class JwtVerifier:
    """Verifies admin tokens for one config; mints tokens with the same secret or private key."""

    def __init__(self, cfg: JwtConfig, *, secret: str | None = None) -> None:
        self.cfg = cfg
        self._secret = secret or cfg.secret
        self._keys: dict[str, Any] = {}  # allowed alg -> its verification key
        self._short_keys: set[str] = set()
        public_key: Any = None
        for alg in cfg.algorithms:
            if alg.startswith("HS"):
                if not self._secret:
                    continue
                key, short = _check_secret(alg, self._secret.encode())
            elif alg.startswith(("RS", "ES")):
                if not cfg.public_key_file:
                    raise ConfigError([f"{_CFG}.public_key_file: is required for {alg}"])
                if public_key is None:
                    public_key = _load_public_key(cfg.public_key_file)
                key, short = _bind(alg, public_key, "public_key_file")
            else:  # the loader refuses these; a hand-built config must not slip through
                raise ConfigError([f"{_CFG}.algorithms: unsupported algorithm {alg!r}"])
            self._keys[alg] = key
            if short:
                self._short_keys.add(alg)
        if not self._keys:
            raise ConfigError(
                [
                    f"{_CFG}.secret: {', '.join(cfg.algorithms)} needs a secret and none was "
                    "configured or generated"
                ]
            )
        self._private_key: Any = None

    @property
    def algorithms(self) -> tuple[str, ...]:
        """The algorithms this verifier will actually accept."""
        return tuple(self._keys)

    def verify(self, token: str) -> dict[str, Any]:
        """Return the claims of a valid token, else raise ``AdminAuthError``."""
        if not token:
            raise AdminAuthError("missing token")
        if len(token) > MAX_TOKEN_LENGTH:
            raise AdminAuthError("malformed", "too long")
        import jwt as pyjwt  # loaded at the first token, not with the config (module docstring)

        try:
            header = pyjwt.get_unverified_header(token)
        except pyjwt.PyJWTError as exc:
            raise _reason(exc) from None
        alg = header.get("alg")
        # The header only chooses among configured algorithms; its key was bound at load.
        if not isinstance(alg, str) or alg not in self._keys:
            raise AdminAuthError("algorithm not allowed", repr(alg)[:20])
        try:
            with _quiet(alg in self._short_keys):
                claims: dict[str, Any] = pyjwt.decode(
                    token,
                    self._keys[alg],
                    algorithms=[alg],
                    audience=self.cfg.audience,
                    issuer=self.cfg.issuer,
                    leeway=self.cfg.leeway,
                    options={"require": REQUIRED_CLAIMS},
                )
        except pyjwt.PyJWTError as exc:
            raise _reason(exc) from None
        self._check_lifetime(claims)
        return claims

    def _check_lifetime(self, claims: dict[str, Any]) -> None:
        """``max_lifetime_minutes``: a token valid longer than that (from ``iat``, or from now
        when it has none) is refused, however it was signed: a leaked long-lived token must not
        outlive the operator's rule."""
        exp = claims["exp"]
        iat = claims.get("iat")
        start = iat if isinstance(iat, (int, float)) and not isinstance(iat, bool) else time.time()
        limit = self.cfg.max_lifetime_minutes * 60 + self.cfg.leeway
        if not isinstance(exp, (int, float)) or exp - start > limit:
            minutes = (exp - start) / 60 if isinstance(exp, (int, float)) else float("inf")
            raise AdminAuthError(
                "lifetime too long",
                f"{minutes:.0f} minutes > max_lifetime_minutes {self.cfg.max_lifetime_minutes}",
            )

    def _signing(self) -> tuple[str, Any]:
        for alg in self.cfg.algorithms:
            if alg.startswith("HS") and self._secret:
                return alg, self._secret.encode()
            if alg.startswith(("RS", "ES")) and self.cfg.private_key_file:
                if self._private_key is None:
                    self._private_key = _load_private_key(self.cfg.private_key_file)
                key, _ = _bind(alg, self._private_key, "private_key_file")
                return alg, key
        raise ConfigError(
            [
                f"{_CFG}: cannot mint a token: set secret (e.g. via $SMARTPROXY_JWT_SECRET) "
                "for HS* or private_key_file for RS*/ES*"
            ]
        )

    def mint(self, sub: str, minutes: int) -> str:
        """A token for ``sub`` valid for ``minutes``, accepted by this verifier."""
        if not sub:
            raise ValueError("sub must not be empty")
        if minutes <= 0:
            raise ValueError(f"minutes must be positive, got {minutes}")
        if minutes > self.cfg.max_lifetime_minutes:
            raise ValueError(
                f"--minutes {minutes} is longer than {_CFG}.max_lifetime_minutes "
                f"({self.cfg.max_lifetime_minutes}); such a token would be refused"
            )
        alg, key = self._signing()
        now = int(time.time())
        claims = {
            "sub": sub,
            "iss": self.cfg.issuer,
            "aud": self.cfg.audience,
            "iat": now,
            "exp": now + minutes * 60,
        }
        import jwt as pyjwt

        with _quiet(True):  # a short key was logged once, at load
            return pyjwt.encode(claims, key, algorithm=alg)


NO_SECRET_HELP = (
    f"{_CFG}.secret: no secret is configured, so no token can be minted. Do this: run\n"
    "    export SMARTPROXY_JWT_SECRET=$(openssl rand -hex 32)\n"
    "  in the shell that starts the gateway and in the one that runs `smartproxy token`, then "
    "restart the gateway (the shipped config reads secret: \"${SMARTPROXY_JWT_SECRET:-}\"; a "
    "config of your own needs that line too). Or, without a secret, use the admin token the "
    "gateway writes at start to admin-token beside storage.path (./data/admin-token by "
    "default, mode 0600; the start-up log names the file): it makes a new random secret each "
    "start."
)


def mint_token_cli(cfg: Config, sub: str, minutes: int | None) -> str:
    """What ``smartproxy token`` prints: a token signed with the configured secret or key."""
    jcfg = cfg.security.jwt
    if not jcfg.secret and not jcfg.private_key_file:
        raise ConfigError([NO_SECRET_HELP])
    return JwtVerifier(jcfg).mint(sub, jcfg.expiry_minutes if minutes is None else minutes)


def _bearer(request: web.Request) -> str:
    header = request.headers.get("Authorization")
    if header is None:
        raise AdminAuthError("missing token")
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        raise AdminAuthError("malformed", "not a Bearer Authorization header")
    token = token.strip()
    if not token:
        raise AdminAuthError("missing token")
    return token


def _unauthorized(error: AdminAuthError) -> web.Response:
    message = MISSING_MESSAGE if error.reason == "missing token" else GENERIC_MESSAGE
    return AuthenticationFailed(
        message, code="invalid_admin_token", headers={"WWW-Authenticate": "Bearer"}
    ).to_response()


def admin_auth_middleware(
    get_verifier: Callable[[], JwtVerifier],
    *,
    on_failure: Callable[[web.Request, str], bool | None] | None = None,
) -> Middleware:
    """Middleware for the ``/api`` sub-app: a valid admin JWT or a 401.

    ``get_verifier`` is called per request so that a reload swapping the snapshot swaps the keys.
    On success the claims are in ``request[ADMIN_CLAIMS]`` and the subject in
    ``request[ADMIN_SUB]`` (typed ``web.RequestKey``s named "admin_claims" / "admin_sub").
    On failure ``on_failure(request, reason)`` is called (metrics, audit) and the reason is
    logged with the client address, unless ``on_failure`` returns False (it logged the failure
    itself); the token itself is never logged.
    """

    @web.middleware
    async def admin_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            claims = get_verifier().verify(_bearer(request))
        except AdminAuthError as exc:
            # ``on_failure`` returning False has logged the failure itself (rate limited).
            if on_failure is None or on_failure(request, exc.reason) is not False:
                log.warning(
                    "admin auth failed from %s: %s",
                    request.remote or "unknown",
                    f"{exc.reason} ({exc.detail})" if exc.detail else exc.reason,
                )
            return _unauthorized(exc)
        request[ADMIN_CLAIMS] = claims
        sub = claims.get("sub")
        if isinstance(sub, str):
            request[ADMIN_SUB] = sub
        return await handler(request)

    return admin_auth
