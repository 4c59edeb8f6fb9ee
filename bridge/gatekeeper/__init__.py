"""The Partner side of GIP: the HTTP endpoints the gatekeeper calls, and per-user
connections with their keys."""
