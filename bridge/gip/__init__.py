"""GIP/1, the gatekeeper interop profile, shared by the Partner side and the sandbox.

Every choice the profile marks "(ours)" lives in one module here, so that a signed
Reference Offer changes one module and not the bridge:

* :mod:`.noise` and :mod:`.transport`: the prologue, the handshake payload, WebSocket
  framing and the transport message size;
* :mod:`.stanza` and :mod:`.stanzas`: the XML form of stanzas;
* :mod:`.content`: the message content protobuf and its padding;
* :mod:`.media`: media encryption and the download paths;
* :mod:`.tokens`: JWT claims and JWKS documents.
"""
