// Primitives of hybridkex wire v2 (docs/protocol.md §2), over node:crypto and @oqs/liboqs-js.
import crypto from 'node:crypto';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';

export const enc = (s) => Buffer.from(s, 'utf8');
export const cat = (...parts) => Buffer.concat(parts.map((p) => Buffer.from(p)));

export function u8(x) { if (!(x >= 0 && x < 0x100)) throw new RangeError(`u8 out of range: ${x}`); return Buffer.from([x]); }
export function u16(x) { if (!(x >= 0 && x < 0x10000)) throw new RangeError(`u16 out of range: ${x}`); const b = Buffer.alloc(2); b.writeUInt16BE(x); return b; }
export function u32(x) { if (!(x >= 0 && x <= 0xffffffff)) throw new RangeError(`u32 out of range: ${x}`); const b = Buffer.alloc(4); b.writeUInt32BE(x); return b; }
export function u64(x) { const b = Buffer.alloc(8); b.writeBigUInt64BE(BigInt(x)); return b; }
export function vec8(x) { return cat(u8(x.length), x); }
export function vec16(x) { return cat(u16(x.length), x); }

export const HASHES = { sha256: 32, sha384: 48 };
export const hash = (h, ...parts) => crypto.createHash(h).update(cat(...parts)).digest();
export const hmac = (h, key, ...parts) => crypto.createHmac(h, Buffer.from(key)).update(cat(...parts)).digest();

/** Expand(S, label) = HMAC-H(S, label || 0x01), the first HKDF-Expand block. */
export const expand = (h, secret, label) => hmac(h, secret, enc(label), Buffer.from([1]));
/** A 32-byte AEAD key from Expand (first 32 bytes when Hlen = 48). */
export const expandKey32 = (h, secret, label) => expand(h, secret, label).subarray(0, 32);

export function hkdfExpand(h, prk, info, length) {
  const hlen = HASHES[h];
  if (!(length >= 1 && length <= 255 * hlen)) throw new RangeError('HKDF-Expand length out of range');
  const out = [];
  let t = Buffer.alloc(0);
  for (let i = 1; out.length * hlen < length; i++) {
    t = hmac(h, prk, t, info, Buffer.from([i]));
    out.push(t);
  }
  return Buffer.concat(out).subarray(0, length);
}

/** ETSI TS 103 744 §8.2 CatKDF; `length` defaults to Hlen (the protocol's use). */
export function catkdf({ h, kdf, psk, k1, k2, ma, mb, context, label, length }) {
  const hlen = HASHES[h];
  const L = length ?? hlen;
  const info = hash(h, u32(context.length), context, u32(ma.length), ma, u32(mb.length), mb);
  const secret = cat(psk, k1, k2);
  if (kdf === 'HKDF') {
    const prk = hmac(h, label, secret);
    return hkdfExpand(h, prk, info, L);
  }
  if (kdf === 'HMAC') {
    const out = [];
    for (let i = 1; out.length * hlen < L; i++) out.push(hmac(h, label, u32(i), secret, info));
    return Buffer.concat(out).subarray(0, L);
  }
  throw new Error(`unknown CatKDF variant ${kdf}`);
}

/** TH(p1..pn) = H("hybridkex v2 transcript" || u32(len(p1)) || p1 || ...). */
export function transcript(h, ...parts) {
  const x = crypto.createHash(h).update(enc('hybridkex v2 transcript'));
  for (const p of parts) x.update(u32(p.length)).update(Buffer.from(p));
  return x.digest();
}

const ZERO_NONCE = Buffer.alloc(12);

export function aeadSeal(key, aad, plaintext, nonce = ZERO_NONCE) {
  const c = crypto.createCipheriv('chacha20-poly1305', key, nonce, { authTagLength: 16 });
  c.setAAD(aad, { plaintextLength: plaintext.length });
  return cat(c.update(plaintext), c.final(), c.getAuthTag());
}

/** Opens or throws. */
export function aeadOpen(key, aad, sealed, nonce = ZERO_NONCE) {
  if (sealed.length < 16) throw new Error('sealed payload shorter than its tag');
  const d = crypto.createDecipheriv('chacha20-poly1305', key, nonce, { authTagLength: 16 });
  d.setAAD(aad, { plaintextLength: sealed.length - 16 });
  d.setAuthTag(sealed.subarray(sealed.length - 16));
  return cat(d.update(sealed.subarray(0, sealed.length - 16)), d.final());
}

const X25519_PKCS8 = Buffer.from('302e020100300506032b656e04220420', 'hex');
const X25519_SPKI = Buffer.from('302a300506032b656e032100', 'hex');

export function x25519Public(sk) {
  const priv = crypto.createPrivateKey({ key: cat(X25519_PKCS8, sk), format: 'der', type: 'pkcs8' });
  return crypto.createPublicKey(priv).export({ format: 'der', type: 'spki' }).subarray(X25519_SPKI.length);
}

export function x25519(sk, pk) {
  if (pk.length !== 32) throw new Error('X25519 public key is not 32 bytes');
  const privateKey = crypto.createPrivateKey({ key: cat(X25519_PKCS8, sk), format: 'der', type: 'pkcs8' });
  const publicKey = crypto.createPublicKey({ key: cat(X25519_SPKI, pk), format: 'der', type: 'spki' });
  const ss = crypto.diffieHellman({ privateKey, publicKey });
  if (ss.every((b) => b === 0)) throw new Error('X25519 gave the all-zero shared secret');
  return ss;
}

export const timingSafeEqual = (a, b) => a.length === b.length && crypto.timingSafeEqual(a, b);
export const random = (n) => crypto.randomBytes(n);

export function fingerprint(key) {
  return 'SHA256:' + hash('sha256', enc('hybridkex v2 key fingerprint'), key).subarray(0, 16).toString('base64').replace(/=+$/, '');
}

// -- ML-KEM and ML-DSA over liboqs-js -------------------------------------------------------------

export const KEMS = {
  'ml-kem-768': { oqs: 'createMLKEM768', ek: 1184, ct: 1088 },
  'ml-kem-1024': { oqs: 'createMLKEM1024', ek: 1568, ct: 1568 },
};
export const SIGS = {
  'ml-dsa-44': { oqs: 'createMLDSA44', kind: 0x01, pk: 1312, sig: 2420 },
  'ml-dsa-65': { oqs: 'createMLDSA65', kind: 0x02, pk: 1952, sig: 3309 },
  'ml-dsa-87': { oqs: 'createMLDSA87', kind: 0x03, pk: 2592, sig: 4627 },
};
export const sigByPkLength = (n) => Object.keys(SIGS).find((k) => SIGS[k].pk === n);
export const sigByKind = (kind) => Object.keys(SIGS).find((k) => SIGS[k].kind === kind);

let oqsModule = null;
const instances = new Map();

export async function loadOqs(packageDir) {
  if (!oqsModule) {
    const dir = packageDir || process.env.HKX_LIBOQS_JS;
    if (!dir) throw new Error('the @oqs/liboqs-js package directory is not given (--liboqs-js or HKX_LIBOQS_JS)');
    oqsModule = await import(pathToFileURL(join(dir, 'src', 'index.js')).href);
  }
  return oqsModule;
}

async function instance(factoryName) {
  if (!instances.has(factoryName)) {
    if (!oqsModule) await loadOqs();
    instances.set(factoryName, await oqsModule[factoryName]());
  }
  return instances.get(factoryName);
}

export async function kem(name) {
  const spec = KEMS[name];
  const inst = await instance(spec.oqs);
  return {
    ...spec,
    keypair() { const { publicKey, secretKey } = inst.generateKeyPair(); return { ek: Buffer.from(publicKey), dk: secretKey }; },
    encaps(ek) {
      if (ek.length !== spec.ek) throw new Error('ML-KEM encapsulation key of the wrong length');
      const { ciphertext, sharedSecret } = inst.encapsulate(new Uint8Array(ek));
      return { ct: Buffer.from(ciphertext), ss: Buffer.from(sharedSecret) };
    },
    decaps(dk, ct) {
      if (ct.length !== spec.ct) throw new Error('ML-KEM ciphertext of the wrong length');
      return Buffer.from(inst.decapsulate(new Uint8Array(ct), dk));
    },
  };
}

export async function sig(name) {
  const spec = SIGS[name];
  const inst = await instance(spec.oqs);
  return {
    ...spec,
    keypair() { const { publicKey, secretKey } = inst.generateKeyPair(); return { pk: Buffer.from(publicKey), sk: Buffer.from(secretKey) }; },
    sign(sk, m) { return Buffer.from(inst.sign(new Uint8Array(m), new Uint8Array(sk))); },
    verify(pk, m, s) {
      if (pk.length !== spec.pk || s.length !== spec.sig) return false;
      try { return inst.verify(new Uint8Array(m), new Uint8Array(s), new Uint8Array(pk)); } catch { return false; }
    },
  };
}
