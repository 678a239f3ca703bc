// A liboqs peer for the hybridkex interop suite, over @oqs/liboqs-js (liboqs compiled to
// WebAssembly).  Usage: node oqs_peer.mjs PACKAGE_DIR
//
// Reads one JSON request per line on stdin and answers one JSON line on stdout.  Byte
// strings (public keys, ciphertexts, signatures, messages, shared secrets) travel as hex.
// Secret keys stay in this process; requests name them by the handle keygen returned.
//
//   {"op":"info"}                                      -> {"ok":true,"version":...,"node":...}
//   {"op":"kem_keygen","alg":"ML-KEM-768"}             -> {"ok":true,"handle":1,"public_key":HEX}
//   {"op":"kem_encaps","alg":A,"public_key":HEX}       -> {"ok":true,"ciphertext":HEX,"shared_secret":HEX}
//   {"op":"kem_decaps","alg":A,"handle":N,"ciphertext":HEX} -> {"ok":true,"shared_secret":HEX}
//   {"op":"sig_keygen","alg":"ML-DSA-65"}              -> {"ok":true,"handle":2,"public_key":HEX}
//   {"op":"sig_sign","alg":A,"handle":N,"message":HEX} -> {"ok":true,"signature":HEX}
//   {"op":"sig_verify","alg":A,"public_key":HEX,"message":HEX,"signature":HEX} -> {"ok":true,"valid":BOOL}
//
// Any failure answers {"ok":false,"error":"..."} and the peer keeps serving.

import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { pathToFileURL } from 'node:url';

const packageDir = process.argv[2];
if (!packageDir) {
  process.stderr.write('usage: node oqs_peer.mjs PACKAGE_DIR\n');
  process.exit(2);
}
const oqs = await import(pathToFileURL(join(packageDir, 'src', 'index.js')).href);
const version = JSON.parse(readFileSync(join(packageDir, 'package.json'), 'utf8')).version;

const factories = {
  'ML-KEM-768': oqs.createMLKEM768,
  'ML-KEM-1024': oqs.createMLKEM1024,
  'ML-DSA-44': oqs.createMLDSA44,
  'ML-DSA-65': oqs.createMLDSA65,
  'ML-DSA-87': oqs.createMLDSA87,
};
const instances = new Map();
const secrets = new Map();
let nextHandle = 1;

async function instance(alg) {
  if (!instances.has(alg)) {
    const factory = factories[alg];
    if (!factory) throw new Error(`unknown algorithm ${alg}`);
    instances.set(alg, await factory());
  }
  return instances.get(alg);
}

const hex = (bytes) => Buffer.from(bytes).toString('hex');
const bytes = (text) => {
  if (typeof text !== 'string' || !/^([0-9a-f]{2})*$/i.test(text)) throw new Error('expected a hex string');
  return new Uint8Array(Buffer.from(text, 'hex'));
};
const secret = (handle) => {
  if (!secrets.has(handle)) throw new Error(`no key with handle ${handle}`);
  return secrets.get(handle);
};

async function handle(req) {
  switch (req.op) {
    case 'info':
      return { version, node: process.version, algorithms: Object.keys(factories) };
    case 'kem_keygen':
    case 'sig_keygen': {
      const { publicKey, secretKey } = (await instance(req.alg)).generateKeyPair();
      const h = nextHandle++;
      secrets.set(h, secretKey);
      return { handle: h, public_key: hex(publicKey) };
    }
    case 'kem_encaps': {
      const { ciphertext, sharedSecret } = (await instance(req.alg)).encapsulate(bytes(req.public_key));
      return { ciphertext: hex(ciphertext), shared_secret: hex(sharedSecret) };
    }
    case 'kem_decaps':
      return { shared_secret: hex((await instance(req.alg)).decapsulate(bytes(req.ciphertext), secret(req.handle))) };
    case 'sig_sign':
      return { signature: hex((await instance(req.alg)).sign(bytes(req.message), secret(req.handle))) };
    case 'sig_verify':
      return { valid: (await instance(req.alg)).verify(bytes(req.message), bytes(req.signature),
                                                         bytes(req.public_key)) };
    default:
      throw new Error(`unknown op ${req.op}`);
  }
}

const lines = createInterface({ input: process.stdin, crlfDelay: Infinity });
for await (const line of lines) {
  if (!line.trim()) continue;
  let answer;
  try {
    answer = { ok: true, ...(await handle(JSON.parse(line))) };
  } catch (err) {
    answer = { ok: false, error: String(err && err.message ? err.message : err).split('\n')[0] };
  }
  process.stdout.write(JSON.stringify(answer) + '\n');
}
for (const inst of instances.values()) inst.destroy();
