"""Admin JWT: every refusal reason, key types, minting, and the middleware over real HTTP."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import time
from pathlib import Path
from typing import Any

import jwt as pyjwt
import pytest
from aiohttp import web
from conftest import fresh_python
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from smartproxy.config import Config, JwtConfig, SecurityConfig
from smartproxy.errors import ConfigError
from smartproxy.security.jwt import (
    ADMIN_CLAIMS,
    ADMIN_SUB,
    AdminAuthError,
    JwtVerifier,
    admin_auth_middleware,
    generate_secret,
    mint_token_cli,
    needs_generated_secret,
)

SECRET = "test-secret-that-is-long-enough-for-hs256-and-even-for-hs512-0123"  # >= 64 bytes
HS = JwtConfig(secret=SECRET, issuer="smartproxy", audience="smartproxy-admin", leeway=5)


def claims(**over: Any) -> dict[str, Any]:
    now = int(time.time())
    base: dict[str, Any] = {
        "sub": "alice",
        "iss": "smartproxy",
        "aud": "smartproxy-admin",
        "iat": now,
        "exp": now + 600,
    }
    base.update(over)
    return {k: v for k, v in base.items() if v is not None}


def hs_token(secret: str = SECRET, **over: Any) -> str:
    return pyjwt.encode(claims(**over), secret, algorithm="HS256")


def b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def reason_of(verifier: JwtVerifier, token: str) -> str:
    with pytest.raises(AdminAuthError) as info:
        verifier.verify(token)
    return info.value.reason


# ----------------------------------------------------------------------------- HS256
def test_valid_hs256_token_returns_claims() -> None:
    assert JwtVerifier(HS).verify(hs_token())["sub"] == "alice"


def test_a_token_without_sub_is_valid() -> None:
    """Contract §6 requires signature, iss, aud and exp; refusing a token for lacking ``sub`` was
    stricter than that (audit finding). The audit log then names no one (sub null)."""
    assert "sub" not in JwtVerifier(HS).verify(hs_token(sub=None))


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        ("", "missing token"),
        (hs_token(secret="another-secret-that-is-long-enough-too"), "bad signature"),
        (hs_token(aud="someone-else"), "wrong audience"),
        (hs_token(iss="evil"), "wrong issuer"),
        (hs_token(exp=int(time.time()) - 60), "expired"),
        (hs_token(exp=None), "malformed"),
        (hs_token(aud=None), "malformed"),
        (hs_token(iss=None), "malformed"),
        ("not.a.jwt", "malformed"),
        ("garbage", "malformed"),
        ("x" * 9000, "malformed"),
    ],
    ids=[
        "empty",
        "signature",
        "aud",
        "iss",
        "expired",
        "no-exp",
        "no-aud",
        "no-iss",
        "junk",
        "no-dots",
        "too-long",
    ],
)
def test_refusals_name_the_failed_check(token: str, reason: str) -> None:
    assert reason_of(JwtVerifier(HS), token) == reason


def test_leeway_accepts_just_expired_token() -> None:
    token = hs_token(exp=int(time.time()) - 2)  # within the 5 s leeway
    assert JwtVerifier(HS).verify(token)["sub"] == "alice"


def test_by_default_a_token_expired_a_second_ago_is_refused() -> None:
    """Contract §6: expired = 401. Clock skew is forgiven only when ``leeway`` is set."""
    default = JwtConfig(secret=SECRET, issuer="smartproxy", audience="smartproxy-admin")
    assert default.leeway == 0
    assert reason_of(JwtVerifier(default), hs_token(exp=int(time.time()) - 1)) == "expired"


def test_alg_none_is_rejected() -> None:
    unsigned = f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64(claims())}."
    assert reason_of(JwtVerifier(HS), unsigned) == "algorithm not allowed"


def test_algorithm_outside_config_is_rejected() -> None:
    token = pyjwt.encode(claims(), SECRET, algorithm="HS512")
    assert reason_of(JwtVerifier(HS), token) == "algorithm not allowed"


def test_secret_override_is_used_and_config_secret_is_not() -> None:
    generated = generate_secret()
    verifier = JwtVerifier(HS, secret=generated)
    assert verifier.verify(hs_token(secret=generated))["sub"] == "alice"
    assert reason_of(verifier, hs_token()) == "bad signature"


def test_no_secret_is_a_clear_error() -> None:
    cfg = JwtConfig(secret=None)
    assert needs_generated_secret(cfg)
    with pytest.raises(ConfigError, match="secret"):
        JwtVerifier(cfg)


def test_generated_secrets_are_random_and_long() -> None:
    a, b = generate_secret(), generate_secret()
    assert a != b and len(a) >= 43


def test_short_secret_warns_once_not_per_request(caplog: pytest.LogCaptureFixture) -> None:
    verifier = JwtVerifier(JwtConfig(secret="short"))  # filterwarnings=error would catch a warning
    assert "secret" in caplog.text
    token = verifier.mint("alice", 5)
    assert verifier.verify(token)["sub"] == "alice"


@pytest.mark.parametrize(
    "secret",
    [
        "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE\n-----END PUBLIC KEY-----\n",
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIO2x0bJ6oE1hQ6a3m2w0qkA8a0Vh0rQ3Yw3y5m0 ops@host",
    ],
)
def test_an_asymmetric_key_given_as_the_hmac_secret_refuses_the_config(secret: str) -> None:
    with pytest.raises(ConfigError, match="cannot be used with HS256"):
        JwtVerifier(JwtConfig(secret=secret))


def test_a_config_with_hmac_only_loads_without_pyjwt_until_a_token_comes() -> None:
    """PyJWT and the cryptography bindings it imports (~8 MB) are loaded by the first token a
    process checks or mints, not by loading the config: a worker that never serves the admin
    API does not hold them."""
    assert fresh_python(
        "import sys",
        "from smartproxy.app import create_app",
        "from smartproxy.config import parse_config",
        "cfg = parse_config({'security': {'auth': {'jwt': {'secret': 's' * 40}}}})",
        "create_app(cfg)",
        "heavy = ('jwt', 'cryptography.hazmat.bindings._rust')",
        "print([m for m in heavy if m in sys.modules])",
        "from smartproxy.security.jwt import JwtVerifier",
        "v = JwtVerifier(cfg.security.jwt)",
        "print(v.verify(v.mint('alice', 5))['sub'], [m for m in heavy if m in sys.modules])",
    ) == ["[]", "alice ['jwt', 'cryptography.hazmat.bindings._rust']"]


# ----------------------------------------------------------------------------- RS256 / ES256
def write_keys(tmp_path: Path, private: Any, name: str) -> tuple[str, str]:
    pub = tmp_path / f"{name}.pub.pem"
    priv = tmp_path / f"{name}.pem"
    pub.write_bytes(
        private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    priv.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return str(pub), str(priv)


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def test_rs256_accepts_signed_and_rejects_other_key(tmp_path: Path, rsa_key: Any) -> None:
    pub, _ = write_keys(tmp_path, rsa_key, "rsa")
    verifier = JwtVerifier(JwtConfig(algorithms=("RS256",), public_key_file=pub))
    assert verifier.verify(pyjwt.encode(claims(), rsa_key, algorithm="RS256"))["sub"] == "alice"
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    assert reason_of(verifier, pyjwt.encode(claims(), other, algorithm="RS256")) == "bad signature"


def test_hs_token_signed_with_public_key_is_rejected_under_rs256(
    tmp_path: Path, rsa_key: Any
) -> None:
    pub, _ = write_keys(tmp_path, rsa_key, "rsa")
    verifier = JwtVerifier(JwtConfig(algorithms=("RS256",), public_key_file=pub))
    # The key-confusion attack: HMAC "signed" with the public key's PEM bytes as the secret.
    pem = Path(pub).read_bytes()
    forged = f"{b64({'alg': 'HS256', 'typ': 'JWT'})}.{b64(claims())}"
    sig = hmac.new(pem, forged.encode(), hashlib.sha256).digest()
    forged += "." + base64.urlsafe_b64encode(sig).rstrip(b"=").decode()
    assert reason_of(verifier, forged) == "algorithm not allowed"
    assert reason_of(verifier, hs_token()) == "algorithm not allowed"


def test_es256_accepts_signed_and_rejects_other_key(tmp_path: Path, ec_key: Any) -> None:
    pub, priv = write_keys(tmp_path, ec_key, "ec")
    cfg = JwtConfig(algorithms=("ES256",), public_key_file=pub, private_key_file=priv)
    verifier = JwtVerifier(cfg)
    assert verifier.verify(pyjwt.encode(claims(), ec_key, algorithm="ES256"))["sub"] == "alice"
    other = ec.generate_private_key(ec.SECP256R1())
    assert reason_of(verifier, pyjwt.encode(claims(), other, algorithm="ES256")) == "bad signature"
    assert verifier.verify(verifier.mint("bob", 5))["sub"] == "bob"


def test_rsa_key_configured_for_es256_is_a_config_error(tmp_path: Path, rsa_key: Any) -> None:
    pub, _ = write_keys(tmp_path, rsa_key, "rsa")
    with pytest.raises(ConfigError, match="ES256"):
        JwtVerifier(JwtConfig(algorithms=("ES256",), public_key_file=pub))


def test_unreadable_public_key_file_is_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pem"
    with pytest.raises(ConfigError, match="public_key_file: cannot read"):
        JwtVerifier(JwtConfig(algorithms=("RS256",), public_key_file=str(missing)))
    junk = tmp_path / "junk.pem"
    junk.write_text("not a key")
    with pytest.raises(ConfigError, match="not a PEM public key"):
        JwtVerifier(JwtConfig(algorithms=("RS256",), public_key_file=str(junk)))


def test_minting_without_private_key_is_a_clear_error(tmp_path: Path, rsa_key: Any) -> None:
    pub, _ = write_keys(tmp_path, rsa_key, "rsa")
    verifier = JwtVerifier(JwtConfig(algorithms=("RS256",), public_key_file=pub))
    with pytest.raises(ConfigError, match="private_key_file"):
        verifier.mint("alice", 5)


# ----------------------------------------------------------------------------- minting
def test_mint_then_verify_has_all_claims() -> None:
    verifier = JwtVerifier(HS)
    got = verifier.verify(verifier.mint("ops", 10))
    assert got["sub"] == "ops" and got["iss"] == "smartproxy" and got["aud"] == "smartproxy-admin"
    assert got["exp"] - got["iat"] == 600


def test_mint_token_cli_uses_config_expiry_and_secret() -> None:
    cfg = Config(security=SecurityConfig(jwt=JwtConfig(secret=SECRET, expiry_minutes=7)))
    got = JwtVerifier(cfg.security.jwt).verify(mint_token_cli(cfg, "cli", None))
    assert got["exp"] - got["iat"] == 420
    got = JwtVerifier(cfg.security.jwt).verify(mint_token_cli(cfg, "cli", 1))
    assert got["exp"] - got["iat"] == 60


def test_mint_token_cli_without_secret_says_how_to_fix() -> None:
    with pytest.raises(ConfigError, match="SMARTPROXY_JWT_SECRET"):
        mint_token_cli(Config(), "cli", None)


# ----------------------------------------------------------------------------- middleware
@pytest.fixture
def admin_app() -> tuple[web.Application, list[str]]:
    failures: list[str] = []

    async def whoami(request: web.Request) -> web.Response:
        return web.json_response({"sub": request[ADMIN_SUB], "iss": request[ADMIN_CLAIMS]["iss"]})

    verifier = JwtVerifier(HS)
    app = web.Application(
        middlewares=[
            admin_auth_middleware(lambda: verifier, on_failure=lambda _r, why: failures.append(why))
        ]
    )
    app.router.add_get("/api/whoami", whoami)
    return app, failures


# Words that would tell a caller which check failed ("expired" is in the generic message by design).
LEAKY_WORDS = (
    "signature",
    "audience",
    "issuer",
    "algorithm",
    "allowed",
    "malformed",
    "claim",
    "aud",
)


@pytest.mark.parametrize(
    ("auth", "reason"),
    [
        (f"Bearer {hs_token(secret='another-secret-that-is-long-enough-too')}", "bad signature"),
        (f"Bearer {hs_token(aud='other')}", "wrong audience"),
        (f"Bearer {hs_token(iss='other')}", "wrong issuer"),
        (f"Bearer {hs_token(exp=int(time.time()) - 120)}", "expired"),
        (f"Bearer {b64({'alg': 'none'})}.{b64(claims())}.", "algorithm not allowed"),
        ("Basic dXNlcjpwYXNz", "malformed"),
    ],
    ids=["signature", "aud", "iss", "expired", "none", "basic"],
)
async def test_middleware_refuses_without_saying_why(
    aiohttp_client: Any,
    admin_app: tuple[web.Application, list[str]],
    caplog: pytest.LogCaptureFixture,
    auth: str,
    reason: str,
) -> None:
    app, failures = admin_app
    client = await aiohttp_client(app)
    caplog.set_level(logging.WARNING, logger="smartproxy.security.jwt")
    resp = await client.get("/api/whoami", headers={"Authorization": auth})
    assert resp.status == 401
    assert resp.headers["WWW-Authenticate"] == "Bearer"
    body = await resp.json()
    assert body == {
        "error": {
            "message": "invalid or expired admin token",
            "type": "invalid_request_error",
            "code": "invalid_admin_token",
            "param": None,
        }
    }
    raw = (await resp.text()).lower()
    assert not [word for word in LEAKY_WORDS if word in raw]
    assert failures == [reason]
    assert reason in caplog.text and "127.0.0.1" in caplog.text
    token = auth.split(" ", 1)[1]
    assert token not in caplog.text
    for part in token.split("."):  # not even a piece of it
        assert not part or part not in caplog.text


async def test_middleware_missing_header_says_missing(
    aiohttp_client: Any, admin_app: tuple[web.Application, list[str]]
) -> None:
    app, failures = admin_app
    client = await aiohttp_client(app)
    resp = await client.get("/api/whoami")
    assert resp.status == 401
    assert (await resp.json())["error"]["message"] == "missing bearer token"
    assert failures == ["missing token"]


async def test_middleware_valid_token_reaches_handler(
    aiohttp_client: Any,
    admin_app: tuple[web.Application, list[str]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    app, failures = admin_app
    client = await aiohttp_client(app)
    token = JwtVerifier(HS).mint("alice", 5)
    resp = await client.get("/api/whoami", headers={"Authorization": f"bearer {token}"})
    assert resp.status == 200
    assert await resp.json() == {"sub": "alice", "iss": "smartproxy"}
    assert failures == [] and token not in caplog.text


async def test_middleware_follows_verifier_swap(aiohttp_client: Any) -> None:
    current = {"v": JwtVerifier(HS)}

    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application(middlewares=[admin_auth_middleware(lambda: current["v"])])
    app.router.add_get("/api/x", ok)
    client = await aiohttp_client(app)
    old = current["v"].mint("alice", 5)
    assert (await client.get("/api/x", headers={"Authorization": f"Bearer {old}"})).status == 200
    current["v"] = JwtVerifier(HS, secret=generate_secret())  # a reload with a new secret
    assert (await client.get("/api/x", headers={"Authorization": f"Bearer {old}"})).status == 401


# ----------------------------------------------------------------------------- max lifetime ([6])
TEN_YEARS = 10 * 365 * 24 * 3600


@pytest.mark.parametrize("with_iat", [True, False])
def test_a_ten_year_token_is_refused(with_iat: bool) -> None:
    c = claims(exp=int(time.time()) + TEN_YEARS)
    if not with_iat:
        c.pop("iat", None)
    token = pyjwt.encode(c, SECRET, algorithm="HS256")
    with pytest.raises(AdminAuthError) as exc:
        JwtVerifier(HS).verify(token)
    assert exc.value.reason == "lifetime too long"


def test_lifetime_up_to_the_maximum_is_accepted() -> None:
    now = int(time.time())
    cfg = JwtConfig(secret=SECRET, leeway=5, max_lifetime_minutes=60)
    ok = pyjwt.encode(claims(iat=now, exp=now + 3600), SECRET, algorithm="HS256")
    assert JwtVerifier(cfg).verify(ok)["sub"] == "alice"
    long = pyjwt.encode(claims(iat=now, exp=now + 3700), SECRET, algorithm="HS256")
    with pytest.raises(AdminAuthError, match="lifetime too long"):
        JwtVerifier(cfg).verify(long)


def test_mint_refuses_longer_than_the_maximum() -> None:
    with pytest.raises(ValueError, match="max_lifetime_minutes"):
        JwtVerifier(HS).mint("alice", 1441)
    assert JwtVerifier(HS).verify(JwtVerifier(HS).mint("alice", 1440))["sub"] == "alice"


def test_token_command_refuses_a_ten_year_token(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from smartproxy.cli import main

    p = tmp_path / "c.yaml"
    p.write_text("security: {auth: {jwt: {secret: 'cli-secret-0123456789abcdef0123'}}}\n")
    assert main(["token", "--sub", "ops", "--minutes", str(TEN_YEARS // 60), "--config", str(p)]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and "max_lifetime_minutes (1440)" in captured.err


async def test_a_ten_year_token_is_401_and_audited(gateway_factory: Any) -> None:
    from conftest import ADMIN_SECRET, base_config

    gw = await gateway_factory(base_config(), write_file=True)
    token = pyjwt.encode(
        claims(exp=int(time.time()) + TEN_YEARS), ADMIN_SECRET, algorithm="HS256"
    )
    resp = await gw.client.get("/api/channels", headers={"Authorization": f"Bearer {token}"})
    assert resp.status == 401
    line = json.loads((gw.config_path.parent / "audit.log").read_text().splitlines()[-1])
    assert line["action"] == "auth_failed" and line["reason"] == "lifetime too long"


def test_expiry_minutes_above_the_maximum_is_a_config_error() -> None:
    from smartproxy.config import parse_config

    with pytest.raises(ConfigError, match="expiry_minutes: 2000 is longer than max_lifetime"):
        parse_config({"security": {"auth": {"jwt": {"secret": "x" * 32, "expiry_minutes": 2000}}}})
