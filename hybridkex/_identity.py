"""Long-term ML-DSA identity key files.

``id.key`` is a PKCS#8 PEM holding the FIPS 204 seed (the form OpenSSL 3.5+ and pyca
write), created 0600; ``id.pub`` is a SubjectPublicKeyInfo PEM.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from ._errors import ConfigError
from .io._files import atomic_write, read_secret_file
from .protocol._identity import PRIVATE_BY_NAME, PRIVATE_TYPES, PUBLIC_TYPES, Identity, PublicIdentity

__all__ = ["load_identity", "load_public_identity", "write_identity"]


def write_identity(identity: Identity, directory: str | os.PathLike[str], *, force: bool = False) -> tuple[Path, Path]:
    """Write ``DIR/id.key`` (0600) and ``DIR/id.pub`` (0644); refuse to overwrite unless ``force``."""
    d = Path(directory)
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    key_path, pub_path = d / "id.key", d / "id.pub"
    if not force:
        for p in (key_path, pub_path):
            if p.exists():
                raise ConfigError(f"{p} already exists; pass --force to replace this identity")
    private = PRIVATE_BY_NAME[identity.alg].from_seed_bytes(identity.seed)
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    pub = private.public_key().public_bytes(serialization.Encoding.PEM,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
    atomic_write(key_path, pem, mode=0o600)
    atomic_write(pub_path, pub, mode=0o644)
    return key_path, pub_path


def load_identity(path: str | os.PathLike[str]) -> Identity:
    """Load ``id.key``; refuses files that group or others can read."""
    data = read_secret_file(path, "identity key")
    try:
        private = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise ConfigError(f"{path} is not a PEM private key; create one with 'hybridkex keygen DIR'") from None
    alg = next((name for cls, name in PRIVATE_TYPES.items() if isinstance(private, cls)), None)
    if alg is None:
        raise ConfigError(f"{path} holds a {type(private).__name__}, not an ML-DSA key; "
                          "create one with 'hybridkex keygen DIR'")
    seed = private.private_bytes_raw()  # type: ignore[union-attr]
    return Identity(alg, seed, private.public_key().public_bytes_raw())  # type: ignore[union-attr]


def load_public_identity(path: str | os.PathLike[str]) -> PublicIdentity:
    """Load a peer's ``id.pub`` (SPKI PEM)."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"peer public key {path} does not exist; copy the peer's id.pub here") from None
    except OSError as exc:
        raise ConfigError(f"cannot read peer public key {path}: {exc.strerror}") from None
    try:
        public = serialization.load_pem_public_key(data)
    except (ValueError, TypeError):
        raise ConfigError(f"{path} is not a PEM public key; give the peer's id.pub") from None
    alg = next((name for cls, name in PUBLIC_TYPES.items() if isinstance(public, cls)), None)
    if alg is None:
        raise ConfigError(f"{path} holds a {type(public).__name__}, not an ML-DSA public key")
    return PublicIdentity(alg, public.public_bytes_raw())  # type: ignore[union-attr]
