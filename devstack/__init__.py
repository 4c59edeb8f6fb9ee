"""A local stack on loopback, shared by the demo (``python -m devstack``), the tests and
the benchmarks: a real Synapse, the sandbox gatekeeper as its own process or in-process,
Postgres, and the real peers we did not write (Element's crypto stack through
matrix-js-sdk, libsignal through Node), with the Python drivers for each.

It is not part of the bridge's package: nothing under ``bridge/`` imports it, and it is
not installed with the bridge.
"""
