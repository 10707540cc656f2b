"""Bearer tokens for local work and tests, signed by a key of this machine's own.

`python -m <package> auth dev-setup` makes the key (`.dev/auth/signing-key.pem`, kept out of git)
and the key set the service checks tokens against (`.dev/auth/jwks.json`), and points the service
at them in `.env`; `python -m <package> auth dev-token SUBJECT` prints a token for SUBJECT. No
deployed service should trust this key set: in production AUTH_JWKS_URL names the issuer's.
"""

import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import orjson
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

DEV_DIRECTORY = Path(".dev/auth")
DEV_ISSUER = "urn:dev:local-issuer"
ALGORITHM = "ES256"


@dataclass(frozen=True)
class DevIssuer:
    """A token issuer in a directory: its private key, and the JWKS of its public key."""

    directory: Path = DEV_DIRECTORY
    issuer: str = DEV_ISSUER

    @property
    def key_file(self) -> Path:
        return self.directory / "signing-key.pem"

    @property
    def jwks_file(self) -> Path:
        return self.directory / "jwks.json"

    def ensure(self) -> "DevIssuer":
        """Make the key and its JWKS unless they exist."""
        if not self.key_file.exists():
            self.directory.mkdir(parents=True, exist_ok=True)
            self.rotate()
        return self

    def rotate(self) -> str:
        """A new key, published alone in the JWKS (tokens signed by the old one are refused from
        then on); returns its key id."""
        key = ec.generate_private_key(ec.SECP256R1())
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        self.key_file.touch(mode=0o600)
        self.key_file.write_bytes(pem)
        kid = uuid.uuid4().hex[:16]
        public = jwt.algorithms.ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
        jwks = {"keys": [{**public, "kid": kid, "use": "sig", "alg": ALGORITHM}]}
        self.jwks_file.write_bytes(orjson.dumps(jwks, option=orjson.OPT_INDENT_2))
        return kid

    @property
    def kid(self) -> str:
        kid: str = orjson.loads(self.jwks_file.read_bytes())["keys"][0]["kid"]
        return kid

    def token(self, subject: str, audience: str, *, lifetime_s: float = 3600, **claims: Any) -> str:
        """A token for `subject` meant for `audience`; `claims` add to or replace the standard
        ones (`iss`, `aud`, `iat`, `exp`, ...)."""
        now = int(time.time())
        payload = {
            "iss": self.issuer,
            "sub": subject,
            "aud": audience,
            "iat": now,
            "exp": now + int(lifetime_s),
            **claims,
        }
        key = serialization.load_pem_private_key(self.key_file.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{self.key_file} does not hold an EC private key")
        return jwt.encode(payload, key, algorithm=ALGORITHM, headers={"kid": self.kid})
