"""Running a person's apps: each app is an OCI image booted in its own microVM."""

from cloudpal.compute.images import Image, import_image

__all__ = ["Image", "import_image"]
