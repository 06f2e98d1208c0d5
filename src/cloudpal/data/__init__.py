"""The data pillar: Hypercore 11 in Python, wire-compatible with the JavaScript stack."""
