// Framing (§3) and message codecs (§4) of hybridkex wire v2.
import { cat, u8, u16, u32, u64, vec8, vec16, enc } from './primitives.mjs';

export const MAGIC = Buffer.from('HX');
export const VERSION = 2;
export const MAX_BODY = 32768;
export const T = { InitHello: 1, RespHello: 2, InitFinish: 3, RespFinish: 4, InitConfirm: 5, CookieReply: 6, Alert: 21 };
export const TYPE_NAMES = Object.fromEntries(Object.entries(T).map(([k, v]) => [v, k]));

export const ALERTS = {
  1: ['bad_message', 'it received a malformed or unexpected message'],
  2: ['auth_failed', 'authentication or key confirmation failed'],
  3: ['unknown_peer', 'it does not know this side\'s identity or pre-shared key'],
  4: ['no_common_suite', 'no common suite or authentication mode'],
  5: ['qkd_policy', 'its QKD policy does not allow going on without a QKD key'],
  6: ['qkd_unavailable', 'it could not get the QKD key'],
  7: ['qkd_replay', 'the QKD key_ID was already used'],
  9: ['timeout', 'the handshake timed out'],
  10: ['internal', 'internal error (also: a local fault, which is not the peer\'s)'],
  11: ['context_mismatch', 'the application context differs'],
};
export const A = Object.fromEntries(Object.entries(ALERTS).map(([k, v]) => [v[0], Number(k)]));

export const SUITES = {
  0x0001: { kem: 'ml-kem-768', h: 'sha256', kdf: 'HKDF' },
  0x0002: { kem: 'ml-kem-1024', h: 'sha384', kdf: 'HKDF' },
  0x0003: { kem: 'ml-kem-768', h: 'sha256', kdf: 'HMAC' },
  0x0004: { kem: 'ml-kem-1024', h: 'sha384', kdf: 'HMAC' },
};
export const AUTH_PSK = 0x10;

/** A protocol failure: `alert` is the code to send (null: close silently / send nothing). */
export class ProtocolError extends Error {
  constructor(alert, message, { exitCode } = {}) { super(message); this.alert = alert; this.exitCode = exitCode; }
}
/** The peer sent an Alert. */
export class PeerAlert extends Error {
  constructor(code) {
    const [name, text] = ALERTS[code] ?? ALERTS[10];
    super(`the peer sent alert ${name}: ${text}`); this.code = code; this.alertName = name;
  }
}

export function frame(type, body) {
  if (body.length > MAX_BODY) throw new RangeError('frame body too long');
  return cat(MAGIC, u8(VERSION), u8(type), u32(body.length), body);
}

/** Checks a frame header (8 bytes); returns {type, length} or throws ProtocolError. */
export function parseHeader(h) {
  if (h[0] !== 0x48 || h[1] !== 0x58) throw new ProtocolError(A.bad_message, 'not a hybridkex peer (wrong magic)');
  if (h[2] !== VERSION) throw new ProtocolError(A.bad_message, `the peer speaks wire version ${h[2]}, this side version ${VERSION}`);
  const type = h[3];
  if (!(type in TYPE_NAMES)) throw new ProtocolError(A.bad_message, `unknown message type ${type}`);
  const length = h.readUInt32BE(4);
  if (length > MAX_BODY) throw new ProtocolError(A.bad_message, `frame length ${length} over ${MAX_BODY}`);
  return { type, length };
}

/** Reads fields from a body; every read is bounds-checked; end() requires exact consumption. */
export class Reader {
  constructor(buf, what) { this.buf = buf; this.off = 0; this.what = what; }
  bad(msg) { throw new ProtocolError(A.bad_message, `malformed ${this.what}: ${msg}`); }
  take(n) {
    if (this.off + n > this.buf.length) this.bad('truncated');
    const out = this.buf.subarray(this.off, this.off + n); this.off += n; return out;
  }
  u8() { return this.take(1)[0]; }
  u16() { return this.take(2).readUInt16BE(0); }
  u64() { return this.take(8).readBigUInt64BE(0); }
  vec8() { return this.take(this.u8()); }
  vec16() { return this.take(this.u16()); }
  end() { if (this.off !== this.buf.length) this.bad('trailing bytes'); }
}

// -- InitHello ------------------------------------------------------------------------------------

export function encodeInitHelloPrefix({ timestamp, nonce, suites, authKind, qkdPolicy, context, x25519, kemKey }) {
  if (suites.length < 1 || suites.length > 127) throw new RangeError('suite count');
  return cat(u64(timestamp), nonce, u8(suites.length), ...suites.map(u16), u8(authKind), u8(qkdPolicy),
    vec8(context), vec8(x25519), vec16(kemKey));
}

export function parseInitHello(body) {
  const r = new Reader(body, 'InitHello');
  const m = {};
  m.timestamp = r.u64();
  m.nonce = r.take(32);
  const n = r.u8();
  if (n < 1 || n > 127) r.bad('suite count out of range');
  m.suites = []; for (let i = 0; i < n; i++) m.suites.push(r.u16());
  m.authKind = r.u8();
  m.qkdPolicy = r.u8(); if (m.qkdPolicy > 2) r.bad('QKD policy over 2');
  m.context = r.vec8();
  m.x25519 = r.vec8();
  m.kemKey = r.vec16();
  m.prefix = body.subarray(0, r.off);
  const k = r.u8(); if (k > 4) r.bad('more than 4 PSK identifiers');
  m.pskIds = []; for (let i = 0; i < k; i++) m.pskIds.push(r.take(16));
  m.mac1 = r.take(16);
  m.mac2 = r.take(16);
  r.end();
  return m;
}

// -- RespHello ------------------------------------------------------------------------------------

export function encodeRespHelloPub({ nonce, suite, qkdPolicy, x25519, kemCiphertext, pskChoice }) {
  return cat(nonce, u16(suite), u8(qkdPolicy), vec8(x25519), vec16(kemCiphertext), u8(pskChoice));
}

export function parseRespHello(body) {
  const r = new Reader(body, 'RespHello');
  const m = {};
  m.nonce = r.take(32);
  m.suite = r.u16();
  m.qkdPolicy = r.u8(); if (m.qkdPolicy > 2) r.bad('QKD policy over 2');
  m.x25519 = r.vec8();
  m.kemCiphertext = r.vec16();
  m.pskChoice = r.u8();
  m.pub = body.subarray(0, r.off);
  m.sealed = r.vec16();
  r.end();
  return m;
}

/** Parses vec16(a) || vec16(b) [|| vec8(c)] exactly. */
export function parsePlain(buf, what, shape) {
  const r = new Reader(buf, what);
  const out = shape.map((s) => (s === 8 ? r.vec8() : r.vec16()));
  r.end();
  return out;
}

// -- QKD block ------------------------------------------------------------------------------------

export function encodeQkdBlock({ status, reason, masterSaeId, slaveSaeId, keyBits, keyIds }) {
  if (keyIds.length > 16) throw new RangeError('more than 16 key_IDs');
  return cat(u8(status), u8(reason), vec8(enc(masterSaeId)), vec8(enc(slaveSaeId)), u16(keyBits), u8(keyIds.length), ...keyIds);
}

export function readQkdBlock(r) {
  const start = r.off;
  const b = {};
  b.status = r.u8(); if (b.status > 2) r.bad('QKD status over 2');
  b.reason = r.u8(); if (b.reason > 4) r.bad('unknown QKD reason');
  const dec = new TextDecoder('utf-8', { fatal: true });
  try { b.masterSaeId = dec.decode(r.vec8()); b.slaveSaeId = dec.decode(r.vec8()); } catch (e) {
    if (e instanceof ProtocolError) throw e; r.bad('SAE ID is not UTF-8');
  }
  b.keyBits = r.u16();
  const n = r.u8(); if (n > 16) r.bad('more than 16 key_IDs');
  b.keyIds = []; for (let i = 0; i < n; i++) b.keyIds.push(Buffer.from(r.take(16)));
  b.bytes = r.buf.subarray(start, r.off);
  if ((b.status === 1) !== (b.keyIds.length >= 1)) r.bad('QKD status used without key_IDs, or key_IDs without used');
  if ((b.status === 2) !== (b.reason !== 0)) r.bad('QKD status unavailable iff a reason');
  const seen = new Set(b.keyIds.map((k) => k.toString('hex')));
  if (seen.size !== b.keyIds.length) r.bad('a key_ID repeats');
  return b;
}

export const uuidToBytes = (s) => {
  const hex = s.replace(/-/g, '');
  if (!/^[0-9a-fA-F]{32}$/.test(hex)) throw new Error(`not a UUID: ${s.slice(0, 40)}`);
  return Buffer.from(hex, 'hex');
};
export const bytesToUuid = (b) => {
  const h = b.toString('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
};
