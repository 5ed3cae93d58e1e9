"""lacme-accountd's account key: reading it, checking it, signing with it.

Runs in lacme-accountd, as whichever user owns the account key (never root's
business).  The key is a PEM file (``file:PATH``) or one decrypted by gpg
(``gpg:PATH``); RSA (at least 2048 bits, its private numbers checked for
consistency as RFC 8017 3.2 defines them), EC P-256 or P-384.  It signs
RFC 8555 section 6.2 signing inputs (JWS, RFC 7515) with the algorithm of
RFC 7518 that fits the key; what may be signed is lacme.protocol.wire's rule.
"""

from __future__ import annotations

import math
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from lacme.accountd.policy import Policy
from lacme.core.errors import ConfigError, LacmeError
from lacme.core.record import Record
from lacme.protocol import eab, jwk_keys, jws, wire
from lacme.protocol.scope import SCOPE_VERSION


class AccountKey(Record):
    """The private key and what the greeting says about it."""

    private_key: Any
    alg: str
    jwk: dict
    thumbprint: str

    def sign(self, signing_input: bytes) -> bytes:
        return jwk_keys.sign(self.private_key, self.alg, signing_input)


def read_key_material(privkey: str, gpg: str) -> tuple[str, bytes]:
    """(path, PEM octets) for ``file:PATH`` or ``gpg:PATH``."""
    kind, _, path = privkey.partition(":")
    if kind == "file":
        try:
            with open(path, "rb") as f:
                return path, f.read()
        except OSError as exc:
            raise LacmeError(f"{path}: {exc.strerror or exc}") from None
    if kind == "gpg":
        import subprocess  # only for gpg: keys are mostly plain files

        command = [*gpg.split(), "-o", "-", "--decrypt", "--", path]
        try:
            proc = subprocess.run(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, check=False)
        except OSError as exc:
            raise LacmeError(f"{path}: cannot run {command[0]}: {exc.strerror or exc}") from None
        if proc.returncode != 0:
            raise LacmeError(f"{path}: {command[0]} exited with status {proc.returncode}")
        return path, proc.stdout
    raise ConfigError(f"privkey: expected file:PATH or gpg:PATH: {privkey!r}")


def load_account_key(privkey: str, gpg: str) -> AccountKey:
    """Load and check the account key (RSA >= 2048 bits, EC P-256 or P-384)."""
    path, pem = read_key_material(privkey, gpg)
    try:
        # RSA: check_rsa_private_key replaces the library's check, which also
        # tests p and q for primality: most of a start with an RSA-2048 key
        key = load_pem_private_key(pem, None, unsafe_skip_rsa_key_validation=True)
    except TypeError:  # the PEM is encrypted and we gave no password
        raise LacmeError(f"{path}: encrypted PEM keys are not supported (use gpg:)") from None
    except (ValueError, UnsupportedAlgorithm):
        raise LacmeError(f"{path}: not a PEM private key") from None
    try:
        alg = jwk_keys.alg_for_key(key)
        if isinstance(key, rsa.RSAPrivateKey):
            check_rsa_private_key(key)
    except ValueError as exc:
        raise LacmeError(f"{path}: {exc}") from None
    jwk = jwk_keys.public_jwk(key.public_key())
    return AccountKey(key, alg, jwk, jws.jwk_thumbprint(jwk))


def check_rsa_private_key(key: rsa.RSAPrivateKey) -> None:
    """The private numbers agree with each other (RFC 8017 3.2, second form),
    as OpenSSL's RSA_check_key verifies them: n = p q, d e = 1 mod lcm(p-1, q-1),
    dP e = 1 mod p-1, dQ e = 1 mod q-1, qInv q = 1 mod p.  A damaged key file
    (a CRT signature computed with a wrong dP leaks p) fails here; whether p
    and q are prime is the key generator's business.  ValueError otherwise."""
    priv = key.private_numbers()
    p, q, d = priv.p, priv.q, priv.d
    e, n = priv.public_numbers.e, priv.public_numbers.n
    consistent = (
        p > 2 and q > 2 and p != q and p * q == n and e % 2 == 1
        and d * e % math.lcm(p - 1, q - 1) == 1
        and priv.dmp1 * e % (p - 1) == 1 and priv.dmq1 * e % (q - 1) == 1
        and priv.iqmp * q % p == 1
    )
    if not consistent:
        raise ValueError("inconsistent RSA private key (damaged?)")


class MacKey(Record):
    """The External Account Binding MAC key (RFC 8555 7.3.4) and its identifier."""

    kid: str
    alg: str
    key: bytes


def load_mac_key(path: str, kid: str, alg: str, where: str) -> MacKey:
    """Read the base64url MAC key in ``path`` (``where``: the setting, for errors)."""
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            text = f.read(4096)
    except OSError as exc:
        raise LacmeError(f"{where}: {path}: {exc.strerror or exc}") from None
    try:
        return MacKey(kid=kid, alg=alg, key=eab.parse_mac_key(text))
    except eab.BindingError as exc:
        raise ConfigError(f"{where}: {path}: {exc}") from None


class Signer(Record):
    """The key, and for whom it signs: the account key id, the CA origin when
    pinned by accountd's settings (``origin``) or by the spawning master's
    environment (``fallback_origin``, which a scope's origin replaces), the
    EAB MAC key when there is one, and the signing policy
    (lacme.accountd.policy)."""

    key: AccountKey
    keyid: str | None
    origin: str | None
    mac: MacKey | None = None
    new_key: AccountKey | None = None  # during an account key rollover (RFC 8555 7.3.5)
    fallback_origin: str | None = None
    policy: Policy | None = None

    def greeting(self) -> bytes:
        greeting = wire.Greeting(self.key.alg, self.key.thumbprint, self.keyid, self.key.jwk,
                                 eab_kid=self.mac.kid if self.mac else None,
                                 eab_alg=self.mac.alg if self.mac else None,
                                 new_alg=self.new_key.alg if self.new_key else None,
                                 new_jwk=self.new_key.jwk if self.new_key else None,
                                 scope=SCOPE_VERSION)
        return wire.encode_greeting(greeting)

    def rollover(self) -> tuple[str, dict] | None:
        """(alg, JWK) of the new key, for wire.parse_sign_request."""
        return (self.new_key.alg, self.new_key.jwk) if self.new_key else None

    def binding(self) -> tuple[str, str] | None:
        """(alg, kid) of the MAC key, for wire.parse_sign_request."""
        return (self.mac.alg, self.mac.kid) if self.mac else None

    def sign(self, req: wire.SignRequest) -> bytes:
        """The signature of an accepted request: the MAC of a binding, else the key's."""
        if self.mac is not None and eab.is_binding(req.header):
            return eab.mac(self.mac.alg, self.mac.key, req.signing_input)
        if self.new_key is not None and req.header.get("jwk") == self.new_key.jwk:
            return self.new_key.sign(req.signing_input)
        return self.key.sign(req.signing_input)
