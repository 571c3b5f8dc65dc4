"""Storage on the host: connections, file domains, pools and their monitor (VDSM's on-disk format)."""
