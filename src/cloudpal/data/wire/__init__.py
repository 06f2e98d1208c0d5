"""Sans-IO wire protocols: Noise XX, secretstream framing, protomux, replication messages."""
