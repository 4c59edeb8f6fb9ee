// A Matrix client with Element's own crypto stack (matrix-js-sdk + matrix-sdk-crypto-wasm),
// driven from pytest over JSON lines: one request per line on stdin, one answer per line on
// stdout. Any number of named clients (a user's devices) live in one process.
//
// Requests: {id, op, ...}
//   login   {name, baseUrl, user, password}        -> {userId, deviceId}
//   createRoom {name, invite, encrypted, isDirect} -> {roomId}
//   send    {name, roomId, type, content}          -> {eventId}   (encrypted when the room is)
//   redact  {name, roomId, eventId}                -> {eventId}
//   events  {name, since}                          -> {events, next}
//   deviceStatus {name, userId, deviceId}          -> {known, signedByOwner}
//   shield  {name, roomId, eventId}                -> {colour, reason}  (Element's shield)
//   sendFile {name, roomId, path, content, thumbnailPath?, eventType?, plain?} -> {eventId, url}
//            the file (and its thumbnail) encrypted with matrix-encrypt-attachment, as
//            Element Web does in encrypted rooms, uploaded, and sent as content + file;
//            plain: uploaded as it is (a sticker from a pack), sent as content + url
//   download {name, file?, url?, path}             -> {size, sha256}
//            authenticated media (/_matrix/client/v1/media), decrypted when `file` is given
//   readReceipt {name, roomId, eventId}            -> {}   (m.read, as Element sends on reading)
//   stop    {name}                                 -> {}
//   logout  {name}                                 -> {}   (stops, and deletes the device)
// Every timeline event a client sees is recorded in the shape of a Matrix event, after
// decryption; an event that fails to decrypt is recorded with "undecryptable": true and
// recorded again if a late key lets the SDK decrypt it afterwards. Read receipts are recorded
// as {type: "m.receipt", room_id, content}. Every record carries received_at (ms since the
// epoch), when this client saw it: the demo times each hop with it.
import readline from "node:readline";
import { createHash } from "node:crypto";
import { readFile, writeFile } from "node:fs/promises";
import * as sdk from "matrix-js-sdk";
import { decryptAttachment, encryptAttachment } from "matrix-encrypt-attachment";
import { logger } from "matrix-js-sdk/lib/logger.js";

logger.setLevel("error");
// The WASM tracing layer logs at DEBUG/INFO through these; stdout carries the protocol only.
console.debug = console.info = () => {};
console.log = console.warn = (...args) => process.stderr.write(args.join(" ") + "\n");

const clients = new Map();

function record(entry, ev, position) {
  const failed = ev.isDecryptionFailure();
  entry.events.push({
    // Where the event came in the timeline: decryption may finish in another order.
    timeline_position: position,
    event_id: ev.getId(),
    room_id: ev.getRoomId(),
    sender: ev.getSender(),
    type: failed ? "m.room.encrypted" : ev.getType(),
    state_key: ev.getStateKey(),
    content: failed ? {} : ev.getContent(),
    origin_server_ts: ev.getTs(),
    redacts: ev.event.redacts ?? ev.getContent()?.redacts ?? null,
    encrypted: ev.isEncrypted(),
    undecryptable: failed,
    sender_device: ev.isEncrypted() ? (ev.getWireContent().device_id ?? null) : null,
    session_id: ev.isEncrypted() ? (ev.getWireContent().session_id ?? null) : null,
    received_at: Date.now(),
  });
}

async function login({ name, baseUrl, user, password }) {
  const response = await sdk.createClient({ baseUrl }).loginRequest({
    type: "m.login.password",
    identifier: { type: "m.id.user", user },
    password,
  });
  const client = sdk.createClient({
    baseUrl,
    userId: response.user_id,
    accessToken: response.access_token,
    deviceId: response.device_id,
  });
  await client.initRustCrypto({ useIndexedDB: false });
  const entry = { client, events: [], arrived: 0 };
  clients.set(name, entry);
  client.on(sdk.RoomEvent.Timeline, (ev) => {
    const position = entry.arrived++;
    if (ev.isBeingDecrypted() || ev.shouldAttemptDecryption()) {
      ev.once(sdk.MatrixEventEvent.Decrypted, () => {
        record(entry, ev, position);
        // A failure now may be fixed by a late key: the SDK retries and emits again.
        if (ev.isDecryptionFailure()) ev.once(sdk.MatrixEventEvent.Decrypted, () => record(entry, ev, position));
      });
    } else {
      record(entry, ev, position);
    }
  });
  client.on(sdk.RoomEvent.Receipt, (ev, room) => {
    entry.events.push({
      // Not a timeline event: placed where it came, between the timeline's (whose numbers it shares).
      timeline_position: entry.arrived - 0.5,
      event_id: null,
      room_id: room.roomId,
      sender: null,
      type: "m.receipt",
      content: ev.getContent(),
      origin_server_ts: Date.now(),
      encrypted: false,
      undecryptable: false,
      received_at: Date.now(),
    });
  });
  const autoJoin = (room) => {
    if (room.getMyMembership() === "invite") client.joinRoom(room.roomId).catch((e) => console.log("join", e));
  };
  client.on(sdk.ClientEvent.Room, autoJoin);
  client.on(sdk.RoomEvent.MyMembership, (room, membership) => membership === "invite" && autoJoin(room));
  client.startClient({ initialSyncLimit: 20 });
  await new Promise((resolve) => {
    const onSync = (state) => {
      if (state === "PREPARED") {
        client.off(sdk.ClientEvent.Sync, onSync);
        resolve();
      }
    };
    client.on(sdk.ClientEvent.Sync, onSync);
  });
  return { userId: response.user_id, deviceId: response.device_id };
}

function entryOf(name) {
  const entry = clients.get(name);
  if (!entry) throw new Error(`no client named ${name}`);
  return entry;
}

async function upload(client, roomId, path, mimetype, unencrypted = false) {
  const plain = await readFile(path);
  const encrypted = !unencrypted && client.getCrypto() && (await client.getCrypto().isEncryptionEnabledInRoom(roomId));
  if (!encrypted) {
    const { content_uri } = await client.uploadContent(plain, { type: mimetype, includeFilename: false });
    return { url: content_uri };
  }
  const { data, info } = await encryptAttachment(plain.buffer.slice(plain.byteOffset, plain.byteOffset + plain.length));
  const { content_uri } = await client.uploadContent(Buffer.from(data), {
    type: "application/octet-stream",
    includeFilename: false,
  });
  return { file: { ...info, url: content_uri, mimetype } };
}

async function waitForRoom(client, roomId) {
  for (let i = 0; !client.getRoom(roomId); i++) {
    if (i > 200) throw new Error(`room ${roomId} never appeared`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

const ops = {
  login,
  async sendFile({ name, roomId, path, content, thumbnailPath, eventType, plain }) {
    const { client } = entryOf(name);
    await waitForRoom(client, roomId);
    const mimetype = content.info?.mimetype ?? "application/octet-stream";
    const main = await upload(client, roomId, path, mimetype, plain);
    const body = { ...content, info: { ...(content.info ?? {}) } };
    if (main.file) body.file = main.file;
    else body.url = main.url;
    if (thumbnailPath) {
      const thumb = await upload(client, roomId, thumbnailPath, "image/jpeg");
      if (thumb.file) body.info.thumbnail_file = thumb.file;
      else body.info.thumbnail_url = thumb.url;
    }
    const { event_id } = await client.sendEvent(roomId, eventType ?? "m.room.message", body);
    return { eventId: event_id, url: main.file?.url ?? main.url };
  },
  async download({ name, file, url, path }) {
    const { client } = entryOf(name);
    const mxc = file?.url ?? url;
    const http = client.mxcUrlToHttp(mxc, undefined, undefined, undefined, false, true, true);
    const response = await fetch(http, { headers: { Authorization: `Bearer ${client.getAccessToken()}` } });
    if (!response.ok) throw new Error(`download of ${mxc} answered ${response.status}`);
    let data = await response.arrayBuffer();
    if (file) data = await decryptAttachment(data, file);
    const bytes = Buffer.from(data);
    await writeFile(path, bytes);
    return { size: bytes.length, sha256: createHash("sha256").update(bytes).digest("hex") };
  },
  async createRoom({ name, invite, encrypted, isDirect }) {
    const initial_state = encrypted
      ? [{ type: "m.room.encryption", state_key: "", content: { algorithm: "m.megolm.v1.aes-sha2" } }]
      : [];
    const { room_id } = await entryOf(name).client.createRoom({ invite, is_direct: isDirect, initial_state });
    return { roomId: room_id };
  },
  async send({ name, roomId, type, content }) {
    const { client } = entryOf(name);
    // The room must be known to the client (and its encryption state) before sending.
    await waitForRoom(client, roomId);
    const { event_id } = await client.sendEvent(roomId, type, content);
    return { eventId: event_id };
  },
  async redact({ name, roomId, eventId }) {
    const { event_id } = await entryOf(name).client.redactEvent(roomId, eventId);
    return { eventId: event_id };
  },
  async deviceStatus({ name, userId, deviceId }) {
    const crypto = entryOf(name).client.getCrypto();
    await crypto.getUserDeviceInfo([userId], true);
    const status = await crypto.getDeviceVerificationStatus(userId, deviceId);
    return { known: status !== null, signedByOwner: Boolean(status?.signedByOwner) };
  },
  async shield({ name, roomId, eventId }) {
    const { client } = entryOf(name);
    const event = client.getRoom(roomId)?.findEventById(eventId);
    if (!event) throw new Error(`no event ${eventId} in ${roomId}`);
    const info = await client.getCrypto().getEncryptionInfoForEvent(event);
    return { colour: info?.shieldColour ?? null, reason: info?.shieldReason ?? null };
  },
  async events({ name, since }) {
    const { events } = entryOf(name);
    return { events: events.slice(since), next: events.length };
  },
  async readReceipt({ name, roomId, eventId }) {
    const { client } = entryOf(name);
    const event = client.getRoom(roomId)?.findEventById(eventId);
    if (!event) throw new Error(`no event ${eventId} in ${roomId}`);
    await client.sendReadReceipt(event);
    return {};
  },
  async logout({ name }) {
    const { client } = entryOf(name);
    client.stopClient();
    await client.logout(true);
    clients.delete(name);
    return {};
  },
  async stop({ name }) {
    const { client } = entryOf(name);
    client.stopClient();
    clients.delete(name);
    return {};
  },
};

const lines = readline.createInterface({ input: process.stdin });
lines.on("line", async (line) => {
  const request = JSON.parse(line);
  let answer;
  try {
    answer = { id: request.id, ok: true, result: await ops[request.op](request) };
  } catch (error) {
    answer = { id: request.id, ok: false, error: String(error?.stack ?? error) };
  }
  process.stdout.write(JSON.stringify(answer) + "\n");
});
lines.on("close", () => {
  for (const { client } of clients.values()) client.stopClient();
  process.exit(0);
});
