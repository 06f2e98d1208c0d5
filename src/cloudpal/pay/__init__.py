"""The pay pillar: anonymous, unlinkable payment tokens built on RSA blind signatures.

`blindrsa` is RFC 9474 (the issuer signs without seeing what it signs); the Privacy Pass
token layer and the services come on top of it.
"""

from cloudpal.pay.blindrsa import (
    HASH_LEN,
    MIN_KEY_BITS,
    MSG_PREFIX_LEN,
    RSABSSA_SHA384_PSS_DETERMINISTIC,
    RSABSSA_SHA384_PSS_RANDOMIZED,
    RSABSSA_SHA384_PSSZERO_DETERMINISTIC,
    RSABSSA_SHA384_PSSZERO_RANDOMIZED,
    SALT_LEN,
    VARIANTS,
    BlindRSAError,
    Variant,
    blind,
    blind_sign,
    finalize,
    prepare,
    verify,
)

__all__ = [
    "HASH_LEN",
    "MIN_KEY_BITS",
    "MSG_PREFIX_LEN",
    "RSABSSA_SHA384_PSSZERO_DETERMINISTIC",
    "RSABSSA_SHA384_PSSZERO_RANDOMIZED",
    "RSABSSA_SHA384_PSS_DETERMINISTIC",
    "RSABSSA_SHA384_PSS_RANDOMIZED",
    "SALT_LEN",
    "VARIANTS",
    "BlindRSAError",
    "Variant",
    "blind",
    "blind_sign",
    "finalize",
    "prepare",
    "verify",
]
