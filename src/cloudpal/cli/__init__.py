"""The `cloudpal` command: a thin client over the pillars and the node's control API."""
