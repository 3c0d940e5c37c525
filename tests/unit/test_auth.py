"""Tokens: minted by the gateway's private key, verified with the public key alone."""

import base64
import hashlib
import hmac
import json
import time

import jwt
import pytest
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from datalab.core.auth import Principal, TokenIssuer, TokenVerifier, generate_keypair
from datalab.core.errors import Problem
from datalab.core.secret_files import SecretStore, write_secret


@pytest.fixture()
def keys(tmp_path):
    private, public = generate_keypair()
    write_secret(tmp_path / "jwt_private_key.pem", private)
    write_secret(tmp_path / "jwt_public_key.pem", public)
    store = SecretStore(tmp_path)
    issuer = TokenIssuer(store, "datalab-gateway", "datalab")
    return issuer, TokenVerifier(store, "datalab-gateway", "datalab"), tmp_path


ALICE = Principal(user_id="u1", username="alice", is_admin=False)


def test_round_trip(keys):
    issuer, verifier, _ = keys
    token, claims = issuer.mint(ALICE, "access", 60)
    assert verifier.principal(token) == ALICE
    assert claims["exp"] - claims["iat"] == 60


def test_refresh_token_is_not_an_access_token(keys):
    issuer, verifier, _ = keys
    token, _ = issuer.mint(ALICE, "refresh", 60)
    with pytest.raises(Problem) as err:
        verifier.principal(token)
    assert err.value.status == 401


def test_expired_token_is_rejected(keys):
    issuer, verifier, _ = keys
    token, _ = issuer.mint(ALICE, "access", -5)
    with pytest.raises(Problem, match="expired"):
        verifier.principal(token)


def test_token_signed_by_another_key_is_rejected(keys):
    _, verifier, _ = keys
    other_private, _ = generate_keypair()
    now = int(time.time())
    claims = {"iss": "datalab-gateway", "aud": "datalab", "sub": "u1", "typ": "access",
              "iat": now, "exp": now + 60, "adm": True}
    forged = jwt.encode(claims, load_pem_private_key(other_private.encode(), None), algorithm="EdDSA")
    with pytest.raises(Problem, match="not valid"):
        verifier.principal(forged)


def test_hs256_token_with_public_key_as_secret_is_rejected(keys):
    """The classic algorithm-confusion forgery must fail."""
    _, verifier, home = keys
    public = (home / "jwt_public_key.pem").read_text()
    now = int(time.time())
    claims = {"iss": "datalab-gateway", "aud": "datalab", "sub": "u1", "typ": "access", "iat": now, "exp": now + 60}
    # Built by hand: PyJWT (rightly) refuses to HMAC with a PEM key, an attacker would not.
    def b64(data: bytes) -> bytes:
        return base64.urlsafe_b64encode(data).rstrip(b"=")

    signing_input = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode()) + b"." + b64(json.dumps(claims).encode())
    signature = hmac.new(public.encode(), signing_input, hashlib.sha256).digest()
    forged = (signing_input + b"." + b64(signature)).decode()
    with pytest.raises(Problem, match="not valid"):
        verifier.principal(forged)


def test_key_rotation_is_picked_up(keys):
    issuer, verifier, home = keys
    old, _ = issuer.mint(ALICE, "access", 60)
    private, public = generate_keypair()
    write_secret(home / "jwt_private_key.pem", private)
    write_secret(home / "jwt_public_key.pem", public)
    new, _ = issuer.mint(ALICE, "access", 60)
    assert verifier.principal(new) == ALICE
    with pytest.raises(Problem):
        verifier.principal(old)


@pytest.mark.parametrize("issuer, audience", [("someone-else", "datalab"), ("datalab-gateway", "another-audience")])
def test_token_with_a_foreign_issuer_or_audience_is_rejected(keys, issuer, audience):
    """Signed with our own key, so only the issuer or audience check can refuse it."""
    _, verifier, home = keys
    token, _ = TokenIssuer(SecretStore(home), issuer, audience).mint(ALICE, "access", 60)
    with pytest.raises(Problem, match="not valid") as err:
        verifier.principal(token)
    assert err.value.status == 401
