"""Ed25519 signatures for published anchors (release anchors, checkpoints), with keys from the environment.

Keys never live in the repository or the database:

  FACTORY_SIGNING_KEY       the Ed25519 private key (PEM text, or 64 hex digits of the raw 32-byte seed)
  FACTORY_SIGNING_KEY_FILE  a path to that PEM file (e.g. from a secrets manager mount)
  FACTORY_VERIFY_KEY        the public key (PEM, or 64 hex digits); without it, the signing key's public half
  FACTORY_VERIFY_KEY_FILE   a path to the public key PEM
"""
from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from factory.errors import FactoryError
from factory.storage.ledger import canonical

ANCHOR_FILE = "provenance/anchor.json"
SIGNED_FIELDS = ("dataset", "events", "head", "created_at", "kind", "release")


class KeyConfigError(FactoryError):
    """A configured key cannot be read."""


# ----------------------------------------------------------------------------- keys
def _read_key_text(var: str, file_var: str) -> tuple[str | None, str]:
    text = os.environ.get(var)
    if text:
        return text.strip(), var
    path = os.environ.get(file_var)
    if path:
        try:
            return Path(path).read_text(encoding="utf-8").strip(), f"{file_var} ({Path(path).name})"
        except OSError as e:
            raise KeyConfigError(f"{file_var}: cannot read the key file ({e.strerror})") from None
    return None, ""


def signing_key() -> Ed25519PrivateKey | None:
    """The Ed25519 private key from FACTORY_SIGNING_KEY or FACTORY_SIGNING_KEY_FILE, or None when none is set."""
    text, where = _read_key_text("FACTORY_SIGNING_KEY", "FACTORY_SIGNING_KEY_FILE")
    if text is None:
        return None
    try:
        if "PRIVATE KEY" in text:
            key = serialization.load_pem_private_key(text.encode(), password=None)
        else:
            key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(text))
    except (ValueError, TypeError):
        raise KeyConfigError(f"{where}: not an Ed25519 private key (PEM or 64 hex digits)") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyConfigError(f"{where}: not an Ed25519 key")
    return key


def verify_key() -> Ed25519PublicKey | None:
    """The public key from FACTORY_VERIFY_KEY(_FILE), else the public half of the signing key, else None."""
    text, where = _read_key_text("FACTORY_VERIFY_KEY", "FACTORY_VERIFY_KEY_FILE")
    if text is None:
        private = signing_key()
        return private.public_key() if private else None
    try:
        if "PUBLIC KEY" in text:
            key = serialization.load_pem_public_key(text.encode())
        else:
            key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(text))
    except (ValueError, TypeError):
        raise KeyConfigError(f"{where}: not an Ed25519 public key (PEM or 64 hex digits)") from None
    if not isinstance(key, Ed25519PublicKey):
        raise KeyConfigError(f"{where}: not an Ed25519 key")
    return key


def key_id(public: Ed25519PublicKey) -> str:
    """A short fingerprint of a public key (first 16 hex digits of the sha256 of its raw bytes)."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def generate_key(path: str | Path) -> str:
    """Write a new Ed25519 private key (PEM, mode 0600) to `path`, refusing to overwrite; return the public PEM."""
    path = Path(path)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise FactoryError(f"{path}: exists already; a signing key is never overwritten") from None
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo).decode()


# ----------------------------------------------------------------------------- signed records
def _message(record: dict) -> bytes:
    # per-chain positions are signed when the record has them (records from before person chains have none)
    extra = {"chains": record["chains"]} if "chains" in record else {}
    return canonical({k: record.get(k) for k in SIGNED_FIELDS} | extra).encode()


def published_chains(cut: dict) -> dict:
    """The per-chain positions an anchor publishes ({"chains": {chain: [events, head]}}), or nothing while the
    dataset has only its root chain (then `events` and `head` say it all, as in anchors before person chains)."""
    chains = cut.get("chains") or {}
    if set(chains) <= {""}:
        return {}
    return {"chains": {k: [int(v["events"]), v["head"]] for k, v in sorted(chains.items())}}


def sign(record: dict, key: Ed25519PrivateKey | None = None) -> dict:
    """The record with `signature` and `key_id` added when a signing key is configured (else unchanged)."""
    key = key or signing_key()
    if key is None:
        return dict(record)
    return dict(record, key_id=key_id(key.public_key()),
                signature=base64.b64encode(key.sign(_message(record))).decode())


def check_signature(record: dict, public: Ed25519PublicKey | None) -> str | None:
    """None when the record's signature holds under `public`; else why not (no key, unsigned, wrong key, forged)."""
    if public is None:
        return "no verify key configured (FACTORY_VERIFY_KEY or FACTORY_SIGNING_KEY): signature not checked"
    if not record.get("signature"):
        return "not signed"
    if record.get("key_id") != key_id(public):
        return f"signed with key {record.get('key_id')}, not the configured key {key_id(public)}"
    try:
        public.verify(base64.b64decode(record["signature"]), _message(record))
    except (InvalidSignature, ValueError):
        return "signature does not match the record (the record was edited or forged)"
    return None


# ----------------------------------------------------------------------------- publishing anchors
def release_anchor(cut: dict, dataset: str, version: str) -> dict:
    """What a release publishes in provenance/anchor.json: the chain head and event count it was cut from
    (`cut` from Ledger.chain_anchor), signed when a key is configured."""
    return sign({"kind": "release", "dataset": dataset, "release": version, "events": int(cut["events"]),
                 "head": cut["head"], "created_at": None, **published_chains(cut)})
