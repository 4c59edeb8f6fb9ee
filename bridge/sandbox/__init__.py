"""The sandbox gatekeeper: a stand-in for WhatsApp's or Messenger's interop service.

It speaks GIP/1 (``bridge.gip``) to Partners and simulates native users whose devices
are Signal clients (``bridge.signal``). It never imports the bridge's core.
"""
