"""CloudPal: one person's always-on node — network, data, compute and trust."""

__version__ = "0.1.0"
