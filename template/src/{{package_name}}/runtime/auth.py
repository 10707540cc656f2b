"""Who is calling: bearer tokens (OAuth 2 / OpenID Connect access tokens, as JWTs) checked against
the keys their issuer publishes.

A token is accepted when one of the issuer's keys (the JWKS at AUTH_JWKS_URL, or AUTH_JWKS_FILE)
verifies its signature with an algorithm of AUTH_ALGORITHMS, it names AUTH_ISSUER and
AUTH_AUDIENCE, it has a subject (`sub`) and an expiry, and it is within its validity give or take
AUTH_LEEWAY_S. Anything else is refused with 401 and the reason; a token never causes a 500.

Keys rotate: the key set is fetched again every AUTH_JWKS_REFRESH_S, and early when a token names a
key it lacks, at most once every 10 s, so tokens with made-up key ids cannot flood the issuer.
While the issuer cannot be reached, the keys already known keep working.

Which routes need a token: those that change something (every method but GET, HEAD and OPTIONS)
and whatever reads the caller (`PrincipalDep`: command status, and every route that sends a
command), or every API route with AUTH_REQUIRED_FOR=all; never the health probes. Operator
endpoints (/metrics, /asyncapi.json) ask for OPS_TOKEN instead, when it is set.
"""

import asyncio
import hmac
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Protocol

import httpx
import jwt
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from .settings import ServiceSettings

log = logging.getLogger(__name__)

# A token named by a key id the key set lacks fetches it again, at most this often.
REFETCH_UNKNOWN_KEY_S = 10.0
JWKS_FETCH_TIMEOUT_S = 5.0
# Longer than any access token an issuer hands out; a longer header is refused unread.
MAX_TOKEN_BYTES = 16 * 1024


@dataclass(frozen=True)
class Principal:
    """The authenticated caller: the token's subject, and all its claims (roles, scopes, ...)."""

    subject: str
    claims: Mapping[str, Any] = field(default_factory=dict)
    authenticated: bool = True


# Who calls when AUTH_DISABLED=true: every caller is the same one.
ANONYMOUS = Principal("anonymous", authenticated=False)


class TokenRefusedError(Exception):
    """401: no bearer token, or one that cannot be trusted; the message says which."""


class KeysUnavailableError(Exception):
    """503: the issuer's keys could not be had, and none is known yet."""


class KeySet(Protocol):
    async def find(self, kid: str | None) -> jwt.PyJWK | None: ...

    async def aclose(self) -> None: ...


def _parse(document: bytes) -> dict[str | None, jwt.PyJWK]:
    """The signing keys of a JWKS document, by key id (keys of other uses and unknown types are
    skipped; none left is an error)."""
    keys = jwt.PyJWKSet.from_json(document.decode()).keys
    return {key.key_id: key for key in keys if key.public_key_use in (None, "sig")}


def _pick(keys: dict[str | None, jwt.PyJWK], kid: str | None) -> jwt.PyJWK | None:
    if kid is None:  # a token without `kid`: only a key set of one key says which key
        return next(iter(keys.values())) if len(keys) == 1 else None
    return keys.get(kid)


class JwksFile:
    """A JWKS in a file, read again whenever the file changes (a rotation rewrites it)."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._stamp: tuple[int, int, int] | None = None  # inode, mtime, size: a rewrite moves one
        self._keys: dict[str | None, jwt.PyJWK] = {}

    async def find(self, kid: str | None) -> jwt.PyJWK | None:
        try:
            stat = self._path.stat()
            stamp = stat.st_ino, stat.st_mtime_ns, stat.st_size
            if stamp != self._stamp:
                self._keys = _parse(self._path.read_bytes())
                self._stamp = stamp
        except (OSError, ValueError, jwt.PyJWTError) as exc:
            log.warning("signing keys not read from AUTH_JWKS_FILE=%s: %r", self._path, exc)
            if not self._keys:
                raise KeysUnavailableError("the signing keys cannot be read") from None
        return _pick(self._keys, kid)

    async def aclose(self) -> None:
        return None


class JwksUrl:
    """A JWKS fetched from the issuer, cached for `refresh_s`."""

    def __init__(self, url: str, refresh_s: float) -> None:
        self._url = url
        self._refresh_s = refresh_s
        self._keys: dict[str | None, jwt.PyJWK] = {}
        self._fetched = -float("inf")  # when the keys were last fetched
        self._tried = -float("inf")  # when a fetch was last tried
        self._lock = asyncio.Lock()
        self._client: httpx.AsyncClient | None = None

    async def find(self, kid: str | None) -> jwt.PyJWK | None:
        now = time.monotonic()
        known = _pick(self._keys, kid)
        retry_after = min(REFETCH_UNKNOWN_KEY_S, self._refresh_s)
        due = now - self._fetched >= self._refresh_s
        if (due or known is None) and now - self._tried >= retry_after:
            await self._fetch(now)
            known = _pick(self._keys, kid)
        if not self._keys:
            raise KeysUnavailableError("the issuer's signing keys cannot be fetched")
        return known

    async def _fetch(self, asked_at: float) -> None:
        async with self._lock:  # one fetch at a time; those who waited use its result
            if self._tried >= asked_at:
                return
            self._tried = time.monotonic()
            if self._client is None:
                self._client = httpx.AsyncClient(timeout=JWKS_FETCH_TIMEOUT_S)
            try:
                response = await self._client.get(self._url)
                response.raise_for_status()
                keys = _parse(response.content)
            except (httpx.HTTPError, ValueError, jwt.PyJWTError) as exc:
                kept = f"keeping the {len(self._keys)} known" if self._keys else "none known yet"
                log.warning("signing keys not fetched from AUTH_JWKS_URL: %r; %s", exc, kept)
                return
            self._keys = keys
            self._fetched = self._tried

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()


# What a refused token's 401 says, by the check it failed.
_REFUSALS: list[tuple[type[jwt.PyJWTError], str]] = [
    (jwt.ExpiredSignatureError, "the token has expired"),
    (jwt.ImmatureSignatureError, "the token is not valid yet (nbf or iat in the future)"),
    (jwt.InvalidAudienceError, "the token is not meant for this service (aud)"),
    (jwt.InvalidIssuerError, "the token comes from another issuer (iss)"),
    (jwt.InvalidSignatureError, "the token's signature does not verify"),
]


class Authenticator:
    """Checks bearer tokens as the settings say; built once per app."""

    def __init__(self, settings: ServiceSettings) -> None:
        self.disabled = settings.auth_disabled
        self._all_routes = settings.auth_required_for == "all"
        self._issuer = settings.auth_issuer
        self._audience = settings.auth_audience
        self._algorithms = list(settings.auth_algorithms)
        self._leeway = settings.auth_leeway_s
        ops = settings.ops_token
        self._ops_token = ops.get_secret_value().encode() if ops else None
        self.keys: KeySet | None = None
        if settings.auth_jwks_file is not None:
            self.keys = JwksFile(settings.auth_jwks_file)
        elif settings.auth_jwks_url is not None:
            self.keys = JwksUrl(str(settings.auth_jwks_url), settings.auth_jwks_refresh_s)

    def needed(self, method: str) -> bool:
        """Whether a request of `method` to an API route needs a token."""
        return not self.disabled and (self._all_routes or method not in ("GET", "HEAD", "OPTIONS"))

    async def principal(self, authorization: str | None) -> Principal:
        """The caller the `Authorization` header proves; TokenRefusedError if it proves none."""
        if self.disabled:
            return ANONYMOUS
        token = _bearer(authorization)
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise TokenRefusedError("the bearer token is not a JWT") from None
        algorithm = header.get("alg")
        if algorithm not in self._algorithms:
            shown = repr(algorithm)[:40]
            raise TokenRefusedError(f"the token's algorithm {shown} is not accepted")
        kid = header.get("kid")
        if self.keys is None:  # settings.auth_problem() keeps the app from starting so
            raise KeysUnavailableError("no key set is configured (AUTH_JWKS_URL, AUTH_JWKS_FILE)")
        key = await self.keys.find(kid if isinstance(kid, str) else None)
        if key is None:
            raise TokenRefusedError("the token is signed by a key the issuer does not publish")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.MissingRequiredClaimError as exc:
            raise TokenRefusedError(f"the token has no {exc.claim!r} claim") from None
        except jwt.PyJWTError as exc:
            reason = next((text for kind, text in _REFUSALS if isinstance(exc, kind)), None)
            raise TokenRefusedError(reason or f"the token is invalid: {exc}"[:200]) from None
        subject = claims["sub"]
        if not isinstance(subject, str) or not subject:
            raise TokenRefusedError("the token's subject (sub) is not a non-empty string")
        return Principal(subject, claims)

    def check_ops(self, authorization: str | None) -> None:
        """Operator endpoints: OPS_TOKEN, when set, as a bearer token."""
        if self._ops_token is None:
            return
        token = _bearer(authorization)
        if not hmac.compare_digest(token.encode(), self._ops_token):
            raise TokenRefusedError("this endpoint needs OPS_TOKEN as its bearer token")

    async def aclose(self) -> None:
        if self.keys is not None:
            await self.keys.aclose()


def _bearer(authorization: str | None) -> str:
    if not authorization:
        raise TokenRefusedError("a bearer token is needed (Authorization: Bearer <token>)")
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise TokenRefusedError("expected the header Authorization: Bearer <token>")
    if len(token) > MAX_TOKEN_BYTES:
        raise TokenRefusedError(f"the bearer token is over {MAX_TOKEN_BYTES} bytes")
    return token


# ---------------------------------------------------------------- FastAPI dependencies


def _authenticator(request: Request) -> Authenticator:
    authenticator: Authenticator = request.app.state.authenticator
    return authenticator


# Declares bearer tokens in the OpenAPI document of the routes that need one (Swagger UI's
# "Authorize"); the header itself is read and judged below, to answer with the reason.
_BEARER = HTTPBearer(auto_error=False, description="An access token for AUTH_AUDIENCE")


async def current_principal(
    request: Request, _: Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)]
) -> Principal:
    """The caller; refused with 401 unless its token checks out (ANONYMOUS with AUTH_DISABLED)."""
    known: Principal | None = getattr(request.state, "principal", None)
    if known is None:
        header = request.headers.get("authorization")
        known = request.state.principal = await _authenticator(request).principal(header)
    return known


async def route_access(request: Request) -> None:
    """Every API route's: a valid token where AUTH_REQUIRED_FOR says one is needed."""
    if _authenticator(request).needed(request.method):
        await current_principal(request, None)


async def ops_access(request: Request) -> None:
    """Operator endpoints': OPS_TOKEN, when set."""
    _authenticator(request).check_ops(request.headers.get("authorization"))


PrincipalDep = Annotated[Principal, Depends(current_principal)]
