// Framed transport over a TCP socket with a whole-handshake deadline (§3, §7.6), key files,
// identities and an ETSI GS QKD 014 client (node:https with a client certificate).
import net from 'node:net';
import https from 'node:https';
import fs from 'node:fs';
import { parseHeader, T, ProtocolError, PeerAlert, A, frame, uuidToBytes, bytesToUuid } from './wire.mjs';
import { SIGS } from './primitives.mjs';

export class TimeoutError extends Error {}
export class NetworkError extends Error {}

/** One connection: recv() returns the next frame, checking its header before reading its body. */
export class FramedSocket {
  constructor(sock, deadline) {
    this.sock = sock; this.deadline = deadline;
    this.buf = Buffer.alloc(0); this.waiter = null; this.closed = false; this.error = null;
    sock.on('data', (d) => { this.buf = Buffer.concat([this.buf, d]); this.wake(); });
    sock.on('end', () => { this.closed = true; this.wake(); });
    sock.on('close', () => { this.closed = true; this.wake(); });
    sock.on('error', (e) => { this.error = e; this.closed = true; this.wake(); });
  }
  wake() { const w = this.waiter; this.waiter = null; if (w) w(); }
  async waitData(ms) {
    if (ms <= 0) return false;
    return new Promise((resolve) => {
      const t = setTimeout(() => { this.waiter = null; resolve(false); }, ms);
      this.waiter = () => { clearTimeout(t); resolve(true); };
    });
  }
  left() { return this.deadline - Date.now(); }
  send(buf) { if (!this.sock.destroyed) this.sock.write(buf); }
  async need(n) {
    while (this.buf.length < n) {
      if (this.closed) throw new NetworkError(this.error ? `connection error: ${this.error.code ?? this.error.message}` : 'the peer closed the connection');
      if (this.left() <= 0) throw new TimeoutError('the handshake timed out');
      await this.waitData(this.left());
    }
  }
  async recv() {
    await this.need(8);
    const { type, length } = parseHeader(this.buf.subarray(0, 8));
    await this.need(8 + length);
    const raw = Buffer.from(this.buf.subarray(0, 8 + length));
    this.buf = this.buf.subarray(8 + length);
    const body = raw.subarray(8);
    if (type === T.Alert) {
      if (body.length !== 1) throw new ProtocolError(null, 'a malformed Alert');
      throw new PeerAlert(body[0]);
    }
    return { type, body, raw };
  }
  /** §7.6: after this side's last message, wait up to 5 s for a close or an Alert; an Alert discards the key. */
  async lastMessageGrace(ms = 5000) {
    const until = Math.min(Date.now() + ms, this.deadline + ms);
    while (!this.closed && Date.now() < until) {
      if (this.buf.length >= 8) break;
      await this.waitData(until - Date.now());
    }
    if (this.buf.length >= 8) {
      let hdr;
      try { hdr = parseHeader(this.buf.subarray(0, 8)); } catch { throw new ProtocolError(null, 'garbage after the last message'); }
      if (hdr.type === T.Alert) {
        const end = Date.now() + 1000;
        while (this.buf.length < 9 && !this.closed && Date.now() < end) await this.waitData(end - Date.now());
        throw new PeerAlert(this.buf.length >= 9 ? this.buf[8] : A.internal);
      }
      throw new ProtocolError(null, 'an unexpected message after the last one');
    }
  }
  alert(code) { if (code !== null && code !== undefined && !this.sock.destroyed) this.sock.write(frame(T.Alert, Buffer.from([code]))); }
  close() { this.sock.end(); setTimeout(() => this.sock.destroy(), 500).unref(); }
}

export async function connect(host, port, retrySeconds, deadline) {
  const until = Date.now() + retrySeconds * 1000;
  for (let attempt = 0; attempt < 1000; attempt++) {
    try {
      return await new Promise((resolve, reject) => {
        const s = net.connect({ host, port });
        const t = setTimeout(() => { s.destroy(); reject(new TimeoutError('connect timed out')); }, Math.max(1, deadline - Date.now()));
        s.once('connect', () => { clearTimeout(t); s.setNoDelay(true); resolve(s); });
        s.once('error', (e) => { clearTimeout(t); reject(e); });
      });
    } catch (e) {
      if (Date.now() >= until || Date.now() >= deadline || e instanceof TimeoutError) throw new NetworkError(`cannot connect to ${host}:${port}: ${e.code ?? e.message}`);
      await new Promise((r) => setTimeout(r, 200));
    }
  }
  throw new NetworkError('cannot connect');
}

// -- files ------------------------------------------------------------------------------------------

export function writeSecretFile(path, data) {
  const tmp = `${path}.tmp-${process.pid}`;
  fs.writeFileSync(tmp, data, { mode: 0o600 });
  fs.chmodSync(tmp, 0o600);
  fs.renameSync(tmp, path);
}

export function readPsk(path) {
  const text = fs.readFileSync(path, 'utf8').trim();
  const key = Buffer.from(text, 'base64');
  if (key.length < 16 || key.toString('base64') !== text.replace(/\s/g, '')) throw new Error(`${path}: not a base64 pre-shared key`);
  return key;
}

// ML-DSA SubjectPublicKeyInfo (RFC 9881): OID 2.16.840.1.101.3.4.3.{17,18,19}.
const OIDS = { 'ml-dsa-44': 0x11, 'ml-dsa-65': 0x12, 'ml-dsa-87': 0x13 };
const OID_PREFIX = Buffer.from('06096086480165030403', 'hex');
function derLen(n) { return n < 0x80 ? Buffer.from([n]) : n < 0x100 ? Buffer.from([0x81, n]) : Buffer.from([0x82, n >> 8, n & 0xff]); }
function der(tag, content) { return Buffer.concat([Buffer.from([tag]), derLen(content.length), content]); }

export function spkiPem(alg, pk) {
  const algId = der(0x30, Buffer.concat([OID_PREFIX, Buffer.from([OIDS[alg]])]));
  const spki = der(0x30, Buffer.concat([algId, der(0x03, Buffer.concat([Buffer.from([0]), pk]))]));
  const b64 = spki.toString('base64').match(/.{1,64}/g).join('\n');
  return `-----BEGIN PUBLIC KEY-----\n${b64}\n-----END PUBLIC KEY-----\n`;
}

function readDer(buf, off) {
  const tag = buf[off]; let len = buf[off + 1]; let p = off + 2;
  if (len & 0x80) { const n = len & 0x7f; if (n < 1 || n > 2) throw new Error('bad DER length'); len = 0; for (let i = 0; i < n; i++) len = (len << 8) | buf[p++]; }
  if (p + len > buf.length) throw new Error('truncated DER');
  return { tag, start: p, end: p + len };
}

/** An ML-DSA public key from a PEM SPKI file (the id.pub that `hybridkex keygen` writes). */
export function readPublicKey(path) {
  const text = fs.readFileSync(path, 'utf8');
  const m = text.match(/-----BEGIN PUBLIC KEY-----([\s\S]*?)-----END PUBLIC KEY-----/);
  if (!m) throw new Error(`${path}: not a PEM public key`);
  const d = Buffer.from(m[1].replace(/\s/g, ''), 'base64');
  const outer = readDer(d, 0); if (outer.tag !== 0x30 || outer.end !== d.length) throw new Error(`${path}: not an SPKI`);
  const algId = readDer(d, outer.start); if (algId.tag !== 0x30) throw new Error(`${path}: not an SPKI`);
  const oid = d.subarray(algId.start, algId.end);
  const alg = Object.keys(OIDS).find((a) => oid.equals(Buffer.concat([OID_PREFIX, Buffer.from([OIDS[a]])])));
  if (!alg) throw new Error(`${path}: not an ML-DSA public key`);
  const bits = readDer(d, algId.end); if (bits.tag !== 0x03 || d[bits.start] !== 0 || bits.end !== outer.end) throw new Error(`${path}: bad BIT STRING`);
  const pk = Buffer.from(d.subarray(bits.start + 1, bits.end));
  if (pk.length !== SIGS[alg].pk) throw new Error(`${path}: ${alg} key of the wrong length`);
  return { alg, pk };
}

/** This peer's own identity file: JSON {alg, public_key, secret_key} (base64), mode 0600.  liboqs-js
 * cannot expand the 32-byte seed that `hybridkex keygen` stores, so the JS peer keeps its own format. */
export function readIdentity(path) {
  const j = JSON.parse(fs.readFileSync(path, 'utf8'));
  if (!SIGS[j.alg]) throw new Error(`${path}: unknown algorithm`);
  return { alg: j.alg, pk: Buffer.from(j.public_key, 'base64'), sk: Buffer.from(j.secret_key, 'base64') };
}

// -- ETSI GS QKD 014 ------------------------------------------------------------------------------

export class Etsi014 {
  constructor({ url, ca, cert, key, timeoutMs = 10000 }) {
    this.base = new URL(url);
    if (this.base.protocol !== 'https:') throw new Error('the KME URL must be https://');
    this.tls = { ca: fs.readFileSync(ca), cert: fs.readFileSync(cert), key: fs.readFileSync(key) };
    this.timeoutMs = timeoutMs;
  }
  request(method, path, body) {
    return new Promise((resolve, reject) => {
      const data = body === undefined ? null : Buffer.from(JSON.stringify(body));
      const req = https.request({
        host: this.base.hostname, port: this.base.port || 443, method,
        path: this.base.pathname.replace(/\/$/, '') + path, ...this.tls, agent: false,
        headers: data ? { 'content-type': 'application/json', 'content-length': data.length } : {},
        timeout: this.timeoutMs,
      }, (res) => {
        const chunks = []; let size = 0;
        res.on('data', (c) => { size += c.length; if (size > 1 << 20) req.destroy(new Error('KME answer too large')); else chunks.push(c); });
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8');
          if (res.statusCode !== 200) {
            return reject(Object.assign(new Error(`KME answered HTTP ${res.statusCode}`), { status: res.statusCode, reason: 1 }));
          }
          try { resolve(JSON.parse(text)); } catch { reject(Object.assign(new Error('KME answered malformed JSON'), { reason: 1 })); }
        });
      });
      req.on('timeout', () => req.destroy(new Error('KME request timed out')));
      req.on('error', (e) => reject(Object.assign(new Error(`KME unreachable: ${e.code ?? e.message}`), { reason: 1 })));
      if (data) req.write(data);
      req.end();
    });
  }
  static parseKeys(j, bits, want) {
    if (!j || !Array.isArray(j.keys) || j.keys.length !== want) throw Object.assign(new Error('KME answer without the keys asked for'), { reason: 1 });
    return j.keys.map((k) => {
      const key = Buffer.from(String(k.key), 'base64');
      if (key.length * 8 !== bits) throw Object.assign(new Error('KME returned a key of the wrong size'), { reason: 1 });
      return { keyId: uuidToBytes(String(k.key_ID)), key };
    });
  }
  async encKeys(slaveSaeId, bits, number) {
    const j = await this.request('POST', `/api/v1/keys/${encodeURIComponent(slaveSaeId)}/enc_keys`, { number, size: bits });
    const keys = Etsi014.parseKeys(j, bits, number);
    return { keyIds: keys.map((k) => k.keyId), keys: keys.map((k) => k.key) };
  }
  async decKeys(masterSaeId, keyIds, bits) {
    let j;
    try {
      j = await this.request('POST', `/api/v1/keys/${encodeURIComponent(masterSaeId)}/dec_keys`, { key_IDs: keyIds.map((k) => ({ key_ID: bytesToUuid(k) })) });
    } catch (e) { if (e.status === 400) e.replay = false; throw e; }
    const keys = Etsi014.parseKeys(j, bits, keyIds.length);
    // Keys in key_ID order, and exactly the key_IDs asked for.
    return keyIds.map((id) => {
      const k = keys.find((x) => x.keyId.equals(id));
      if (!k) throw Object.assign(new Error('KME returned other key_IDs'), { reason: 1 });
      return k.key;
    });
  }
}

/** §7.4 append-only key_ID journal, per role: `role key_ID unix-seconds` lines; this peer keeps every entry. */
export class Journal {
  constructor(path) { this.path = path; this.seen = new Set(); if (path && fs.existsSync(path)) for (const l of fs.readFileSync(path, 'utf8').split('\n')) if (l) this.seen.add(l.split(' ').slice(0, 2).join(' ')); }
  has(role, ids) { return ids.some((id) => this.seen.has(`${role} ${bytesToUuid(id)}`)); }
  record(role, ids) {
    if (this.has(role, ids)) throw new ProtocolError(A.qkd_replay, 'a QKD key_ID was already used (journal)', { exitCode: 4 });
    const lines = ids.map((id) => `${role} ${bytesToUuid(id)}`);
    const now = Math.floor(Date.now() / 1000);
    if (this.path) fs.appendFileSync(this.path, lines.map((l) => `${l} ${now}\n`).join(''), { mode: 0o600 });
    for (const l of lines) this.seen.add(l);
  }
}
