"""The bridge's core: logins, portals, puppets, the durable message flow, statuses.

It talks to Matrix only through :class:`.matrix_api.MatrixAPI` and to the gatekeeper
through ``bridge.gatekeeper``; it never imports mautrix.
"""
