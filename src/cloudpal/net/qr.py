"""QR codes of device configs, for the WireGuard mobile apps' "scan from QR" import.

Error correction starts at level L (segno raises it for free when the symbol
size allows) because a full config with keys and several networks is a few
hundred bytes and must still fit a phone-scannable symbol.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile

import segno

from cloudpal.errors import InvalidInput


def _make(text: str) -> segno.QRCode:
    # Without an ECI header readers guess the charset of non-ASCII bytes (zbar picks
    # Shift-JIS for UTF-8 "ë"), so declare UTF-8 -- but only when needed, as some
    # scanners mishandle ECI and plain ASCII configs are the common case.
    eci = not text.isascii()
    try:
        return segno.make(text, error="l", micro=False, encoding="utf-8", eci=eci)
    except segno.DataOverflowError:
        raise InvalidInput(
            f"the text is too long for a QR code ({len(text.encode())} bytes)"
        ) from None


def write_png(text: str, path: str, scale: int = 6) -> None:
    """Write a PNG atomically; the file is owner-only since configs hold private keys."""
    qr = _make(text)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".qr-", suffix=".png", dir=directory)
    try:
        with os.fdopen(fd, "wb") as fh:
            qr.save(fh, kind="png", scale=scale, border=4)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def terminal(text: str) -> str:
    """The QR drawn with ANSI colours and half blocks, ready to print to a terminal."""
    out = io.StringIO()
    _make(text).terminal(out=out, compact=True, border=2)
    return out.getvalue()
