'use strict';
// A test-only Signal peer driven over JSON lines on stdin/stdout.
//
// Each request is {"id": n, "op": "...", ...}; each answer {"id": n, "ok": true, ...} or
// {"id": n, "ok": false, "error": "...", "code": "..."}. Binary values travel as base64.
// A party is one device backed by either official libsignal (@signalapp/libsignal-client
// 0.72.1, the last release that builds X3DH sessions) or libsignal-node 6.0.0 (the
// WhatsApp-lineage library). Stores keep records serialized, as a real store must.

const readline = require('readline');
// stdout carries the answers: libsignal-node's own console messages ("Closing open
// session in favor of incoming prekey bundle") go to stderr.
console.log = console.info = console.warn = console.error;
const S = require('@signalapp/libsignal-client');
const LN = require('libsignal');

const b64 = (buf) => Buffer.from(buf).toString('base64');
const unb64 = (s) => Buffer.from(s, 'base64');
const WHISPER = 2;
const PREKEY = 3;

// ---------------------------------------------------------------- libsignal-client

class ClientParty {
  constructor(registrationId) {
    this.kind = 'libsignal-client';
    this.registrationId = registrationId;
    this.reset();
  }

  reset() {
    this.identity = S.IdentityKeyPair.generate();
    const party = this;
    this.data = new Map();
    const get = (k) => party.data.get(k);
    const set = (k, v) => party.data.set(k, v);
    this.sessions = new (class extends S.SessionStore {
      async saveSession(a, r) { set('s' + a.toString(), r.serialize()); }
      async getSession(a) {
        const b = get('s' + a.toString());
        return b ? S.SessionRecord.deserialize(b) : null;
      }
      async getExistingSessions(as) {
        return as.map((a) => S.SessionRecord.deserialize(get('s' + a.toString())));
      }
    })();
    this.identities = new (class extends S.IdentityKeyStore {
      async getIdentityKey() { return party.identity.privateKey; }
      async getLocalRegistrationId() { return party.registrationId; }
      async saveIdentity(a, k) {
        const old = get('i' + a.toString());
        set('i' + a.toString(), k.serialize());
        return old && Buffer.compare(old, k.serialize()) !== 0
          ? S.IdentityChange.ReplacedExisting : S.IdentityChange.NewOrUnchanged;
      }
      async isTrustedIdentity() { return true; }
      async getIdentity(a) {
        const b = get('i' + a.toString());
        return b ? S.PublicKey.deserialize(b) : null;
      }
    })();
    this.prekeys = new (class extends S.PreKeyStore {
      async savePreKey(i, r) { set('p' + i, r.serialize()); }
      async getPreKey(i) {
        const b = get('p' + i);
        if (!b) throw new Error('no prekey ' + i);
        return S.PreKeyRecord.deserialize(b);
      }
      async removePreKey(i) { party.data.delete('p' + i); }
    })();
    this.signedPrekeys = new (class extends S.SignedPreKeyStore {
      async saveSignedPreKey(i, r) { set('k' + i, r.serialize()); }
      async getSignedPreKey(i) {
        const b = get('k' + i);
        if (!b) throw new Error('no signed prekey ' + i);
        return S.SignedPreKeyRecord.deserialize(b);
      }
    })();
    this.kyber = new (class extends S.KyberPreKeyStore {
      async saveKyberPreKey() { throw new Error('no kyber here'); }
      async getKyberPreKey() { throw new Error('no kyber here'); }
      async markKyberPreKeyUsed() {}
    })();
    this.senderKeys = new (class extends S.SenderKeyStore {
      async saveSenderKey(a, d, r) { set('g' + a.toString() + d, r.serialize()); }
      async getSenderKey(a, d) {
        const b = get('g' + a.toString() + d);
        return b ? S.SenderKeyRecord.deserialize(b) : null;
      }
    })();
  }

  identityKey() { return this.identity.publicKey.serialize(); }

  async makeBundle(req) {
    const spk = S.PrivateKey.generate();
    const spkPub = spk.getPublicKey();
    const sig = this.identity.privateKey.sign(spkPub.serialize());
    await this.signedPrekeys.saveSignedPreKey(req.signed_pre_key_id,
      S.SignedPreKeyRecord.new(req.signed_pre_key_id, Date.now(), spkPub, spk, sig));
    const bundle = {
      registration_id: this.registrationId, device_id: 1,
      signed_pre_key_id: req.signed_pre_key_id, signed_pre_key: b64(spkPub.serialize()),
      signed_pre_key_signature: b64(sig), identity_key: b64(this.identityKey()),
      pre_key_id: null, pre_key: null,
    };
    if (req.one_time) {
      const opk = S.PrivateKey.generate();
      await this.prekeys.savePreKey(req.pre_key_id,
        S.PreKeyRecord.new(req.pre_key_id, opk.getPublicKey(), opk));
      bundle.pre_key_id = req.pre_key_id;
      bundle.pre_key = b64(opk.getPublicKey().serialize());
    }
    return bundle;
  }

  async processBundle(address, b) {
    const bundle = S.PreKeyBundle.new(b.registration_id, b.device_id, b.pre_key_id,
      b.pre_key ? S.PublicKey.deserialize(unb64(b.pre_key)) : null,
      b.signed_pre_key_id, S.PublicKey.deserialize(unb64(b.signed_pre_key)),
      unb64(b.signed_pre_key_signature), S.PublicKey.deserialize(unb64(b.identity_key)));
    await S.processPreKeyBundle(bundle, this.addr(address), this.sessions, this.identities);
  }

  addr(a) { return S.ProtocolAddress.new(a.name, a.device_id); }

  async encrypt(address, plaintext) {
    const ct = await S.signalEncrypt(plaintext, this.addr(address), this.sessions, this.identities);
    const type = ct.type() === S.CiphertextMessageType.PreKey ? PREKEY : WHISPER;
    return { type, body: ct.serialize() };
  }

  async decrypt(address, type, body) {
    if (type === PREKEY) {
      return S.signalDecryptPreKey(S.PreKeySignalMessage.deserialize(body), this.addr(address),
        this.sessions, this.identities, this.prekeys, this.signedPrekeys, this.kyber);
    }
    return S.signalDecrypt(S.SignalMessage.deserialize(body), this.addr(address),
      this.sessions, this.identities);
  }

  sign(message) { return this.identity.privateKey.sign(message); }
}

// ---------------------------------------------------------------- libsignal-node

class NodeParty {
  constructor(registrationId) {
    this.kind = 'libsignal-node';
    this.registrationId = registrationId;
    this.reset();
  }

  reset() {
    this.identity = LN.curve.generateKeyPair();
    this.data = new Map();
    const party = this;
    this.storage = {
      async getOurIdentity() { return party.identity; },
      async getOurRegistrationId() { return party.registrationId; },
      async isTrustedIdentity() { return true; },
      async loadSession(id) {
        const s = party.data.get('s' + id);
        return s ? LN.SessionRecord.deserialize(JSON.parse(s)) : undefined;
      },
      async storeSession(id, record) { party.data.set('s' + id, JSON.stringify(record.serialize())); },
      async loadPreKey(id) { return party.data.get('p' + id); },
      async removePreKey(id) { party.data.delete('p' + id); },
      async loadSignedPreKey(id) { return party.data.get('k' + id); },
    };
  }

  identityKey() { return this.identity.pubKey; }

  async makeBundle(req) {
    const spk = LN.keyhelper.generateSignedPreKey(this.identity, req.signed_pre_key_id);
    this.data.set('k' + spk.keyId, spk.keyPair);
    const bundle = {
      registration_id: this.registrationId, device_id: 1,
      signed_pre_key_id: spk.keyId, signed_pre_key: b64(spk.keyPair.pubKey),
      signed_pre_key_signature: b64(spk.signature), identity_key: b64(this.identity.pubKey),
      pre_key_id: null, pre_key: null,
    };
    if (req.one_time) {
      const opk = LN.keyhelper.generatePreKey(req.pre_key_id);
      this.data.set('p' + opk.keyId, opk.keyPair);
      bundle.pre_key_id = opk.keyId;
      bundle.pre_key = b64(opk.keyPair.pubKey);
    }
    return bundle;
  }

  addr(a) { return new LN.ProtocolAddress(a.name, a.device_id); }

  async processBundle(address, b) {
    const device = {
      registrationId: b.registration_id,
      identityKey: unb64(b.identity_key),
      signedPreKey: {
        keyId: b.signed_pre_key_id, publicKey: unb64(b.signed_pre_key),
        signature: unb64(b.signed_pre_key_signature),
      },
    };
    if (b.pre_key) device.preKey = { keyId: b.pre_key_id, publicKey: unb64(b.pre_key) };
    await new LN.SessionBuilder(this.storage, this.addr(address)).initOutgoing(device);
  }

  async encrypt(address, plaintext) {
    const ct = await new LN.SessionCipher(this.storage, this.addr(address)).encrypt(plaintext);
    return { type: ct.type === 3 ? PREKEY : WHISPER, body: Buffer.from(ct.body) };
  }

  async decrypt(address, type, body) {
    const cipher = new LN.SessionCipher(this.storage, this.addr(address));
    return type === PREKEY ? cipher.decryptPreKeyWhisperMessage(body)
      : cipher.decryptWhisperMessage(body);
  }

  sign(message) { return LN.curve.calculateSignature(this.identity.privKey, message); }
}

// ---------------------------------------------------------------- requests

const parties = new Map();
const party = (name) => {
  const p = parties.get(name);
  if (!p) throw new Error('unknown party ' + name);
  return p;
};

async function bench(req) {
  // The workloads of bench/signal_bench.py, run inside Node on libsignal-client so that
  // no IPC is timed: one-direction, ping-pong, and session set-up.
  const size = req.size || 100;
  const payload = Buffer.alloc(size, 0x61);
  const setupParties = () => {
    const a = new ClientParty(1), b = new ClientParty(2);
    return { a, b, aAddr: { name: 'a', device_id: 1 }, bAddr: { name: 'b', device_id: 1 } };
  };
  const establish = async ({ a, b, aAddr, bAddr }) => {
    const bundle = await b.makeBundle({ one_time: true, signed_pre_key_id: 1, pre_key_id: 1 });
    await a.processBundle(bAddr, bundle);
    const m = await a.encrypt(bAddr, payload);
    await b.decrypt(aAddr, m.type, m.body);
    const r = await b.encrypt(aAddr, payload);
    await a.decrypt(bAddr, r.type, r.body);
  };
  const out = {};
  {
    const p = setupParties(); await establish(p);
    const t0 = process.hrtime.bigint();
    for (let i = 0; i < req.messages; i++) {
      const m = await p.a.encrypt(p.bAddr, payload);
      await p.b.decrypt(p.aAddr, m.type, m.body);
    }
    out.one_direction_s = Number(process.hrtime.bigint() - t0) / 1e9;
  }
  {
    const p = setupParties(); await establish(p);
    const t0 = process.hrtime.bigint();
    for (let i = 0; i < req.ping_pong; i++) {
      const [from, to, fromAddr, toAddr] = i % 2 ? [p.b, p.a, p.bAddr, p.aAddr] : [p.a, p.b, p.aAddr, p.bAddr];
      const m = await from.encrypt(toAddr, payload);
      await to.decrypt(fromAddr, m.type, m.body);
    }
    out.ping_pong_s = Number(process.hrtime.bigint() - t0) / 1e9;
  }
  {
    const t0 = process.hrtime.bigint();
    for (let i = 0; i < req.setups; i++) {
      const p = setupParties();
      const bundle = await p.b.makeBundle({ one_time: true, signed_pre_key_id: 1, pre_key_id: 1 });
      await p.a.processBundle(p.bAddr, bundle);
      const m = await p.a.encrypt(p.bAddr, payload);
      await p.b.decrypt(p.aAddr, m.type, m.body);
    }
    out.setup_s = Number(process.hrtime.bigint() - t0) / 1e9;
  }
  return out;
}

const ops = {
  async new_party(req) {
    const Impl = req.impl === 'libsignal-node' ? NodeParty : ClientParty;
    const p = new Impl(req.registration_id);
    parties.set(req.party, p);
    return { identity_key: b64(p.identityKey()) };
  },
  async reinstall(req) {
    const p = party(req.party);
    p.reset();
    return { identity_key: b64(p.identityKey()) };
  },
  async make_bundle(req) { return { bundle: await party(req.party).makeBundle(req) }; },
  async process_bundle(req) {
    await party(req.party).processBundle(req.peer, req.bundle);
    return {};
  },
  async encrypt(req) {
    const m = await party(req.party).encrypt(req.peer, unb64(req.plaintext));
    return { type: m.type, body: b64(m.body) };
  },
  async decrypt(req) {
    const pt = await party(req.party).decrypt(req.peer, req.type, unb64(req.body));
    return { plaintext: b64(pt) };
  },
  async sign(req) { return { signature: b64(party(req.party).sign(unb64(req.message))) }; },
  async verify(req) {
    const key = unb64(req.key);
    const ok = req.impl === 'libsignal-node'
      ? (() => {
          try { LN.curve.verifySignature(key, unb64(req.message), unb64(req.signature)); return true; }
          catch (e) { return false; }
        })()
      : S.PublicKey.deserialize(key).verify(unb64(req.message), unb64(req.signature));
    return { valid: ok };
  },
  async fingerprint(req) {
    const f = S.Fingerprint.new(req.iterations, req.version, unb64(req.local_id),
      S.PublicKey.deserialize(unb64(req.local_key)), unb64(req.remote_id),
      S.PublicKey.deserialize(unb64(req.remote_key)));
    return {
      display: f.displayableFingerprint().toString(),
      scannable: b64(f.scannableFingerprint().toBuffer()),
    };
  },
  async fingerprint_compare(req) {
    const f = S.Fingerprint.new(req.iterations, req.version, unb64(req.local_id),
      S.PublicKey.deserialize(unb64(req.local_key)), unb64(req.remote_id),
      S.PublicKey.deserialize(unb64(req.remote_key)));
    return { matches: f.scannableFingerprint().compare(S.ScannableFingerprint._fromBuffer(unb64(req.scanned))) };
  },
  async sk_create(req) {
    const p = party(req.party);
    const skdm = await S.SenderKeyDistributionMessage.create(p.addr(req.own),
      req.distribution_id, p.senderKeys);
    return { skdm: b64(skdm.serialize()) };
  },
  async sk_process(req) {
    const p = party(req.party);
    await S.processSenderKeyDistributionMessage(p.addr(req.sender),
      S.SenderKeyDistributionMessage.deserialize(unb64(req.skdm)), p.senderKeys);
    return {};
  },
  async sk_encrypt(req) {
    const p = party(req.party);
    const ct = await S.groupEncrypt(p.addr(req.own), req.distribution_id, p.senderKeys,
      unb64(req.plaintext));
    return { body: b64(ct.serialize()) };
  },
  async sk_decrypt(req) {
    const p = party(req.party);
    const pt = await S.groupDecrypt(p.addr(req.sender), p.senderKeys, unb64(req.body));
    return { plaintext: b64(pt) };
  },
  bench,
};

const rl = readline.createInterface({ input: process.stdin });
let chain = Promise.resolve();
rl.on('line', (line) => {
  // Requests are handled one at a time, in order, like a single client device.
  chain = chain.then(async () => {
    let req;
    try {
      req = JSON.parse(line);
      const op = ops[req.op];
      if (!op) throw new Error('unknown op ' + req.op);
      const result = await op(req);
      process.stdout.write(JSON.stringify({ id: req.id, ok: true, ...result }) + '\n');
    } catch (e) {
      process.stdout.write(JSON.stringify({
        id: req && req.id, ok: false, error: String(e && e.message || e),
        code: String(e && (e.code || e.name) || 'Error'),
      }) + '\n');
    }
  });
});
rl.on('close', () => { chain.then(() => process.exit(0)); });
