"""Running a person's apps: each app is an OCI image booted in its own microVM, woken by traffic.

Names are imported on first use (PEP 562), so `cloudpal app ls` does not load QEMU's driver.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cloudpal.compute.api import app_routes
    from cloudpal.compute.apps import AppService, migrate
    from cloudpal.compute.images import Image, import_image

_EXPORTS = {
    "app_routes": "cloudpal.compute.api",
    "AppService": "cloudpal.compute.apps",
    "migrate": "cloudpal.compute.apps",
    "Image": "cloudpal.compute.images",
    "import_image": "cloudpal.compute.images",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'cloudpal.compute' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = ["AppService", "Image", "app_routes", "import_image", "migrate"]
