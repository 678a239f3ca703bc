#!/usr/bin/env node
// A second, independent implementation of hybridkex wire v2 (docs/protocol.md), for interop tests.
//
//   node cli.mjs keygen DIR [--alg ml-dsa-65]          DIR/id.key (this peer's JSON format, 0600), DIR/id.pub (PEM SPKI)
//   node cli.mjs exchange (--listen H:P | --connect H:P) [options, as `hybridkex exchange`] --out FILE [--json]
//   node cli.mjs catkdf FILE.json                      recompute ETSI TS 103 744 CatKDF vectors
//   node cli.mjs vectors DIR                           recompute the protocol vectors in DIR
//
// The @oqs/liboqs-js package directory comes from --liboqs-js DIR or $HKX_LIBOQS_JS.
// Exit codes as hybridkex: 2 configuration, 3 authentication, 4 QKD, 5 network or timeout, 1 other.
// On failure: one line "hybridkex-js: error: ..." on stderr, no key file.
import fs from 'node:fs';
import net from 'node:net';
import { join } from 'node:path';
import { loadOqs, sig, SIGS, fingerprint } from './primitives.mjs';
import { runInitiator, runResponder, POLICY, Silent } from './handshake.mjs';
import { ProtocolError, PeerAlert, SUITES } from './wire.mjs';
import { FramedSocket, connect, TimeoutError, NetworkError, writeSecretFile, readPsk, readPublicKey, readIdentity, spkiPem, Etsi014, Journal } from './io.mjs';

class ConfigError extends Error {}

function parseArgs(argv) {
  const opts = { _: [] };
  const multi = new Set(['peer']);
  const flags = new Set(['json']);
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (!a.startsWith('--')) { opts._.push(a); continue; }
    const name = a.slice(2);
    if (flags.has(name)) { opts[name] = true; continue; }
    if (i + 1 >= argv.length) throw new ConfigError(`${a} needs a value`);
    const v = argv[++i];
    if (multi.has(name)) (opts[name] ??= []).push(v); else opts[name] = v;
  }
  return opts;
}

function hostPort(s) {
  const i = s.lastIndexOf(':');
  if (i < 0) throw new ConfigError(`not HOST:PORT: ${s}`);
  return { host: s.slice(0, i), port: Number(s.slice(i + 1)) };
}

async function keygen(opts) {
  const dir = opts._[1];
  if (!dir) throw new ConfigError('keygen needs a directory');
  const alg = opts.alg ?? 'ml-dsa-65';
  if (!SIGS[alg]) throw new ConfigError(`unknown --alg ${alg}`);
  const { pk, sk } = (await sig(alg)).keypair();
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  writeSecretFile(join(dir, 'id.key'), JSON.stringify({ alg, public_key: pk.toString('base64'), secret_key: sk.toString('base64') }) + '\n');
  fs.writeFileSync(join(dir, 'id.pub'), spkiPem(alg, pk), { mode: 0o644 });
  process.stdout.write(`${fingerprint(pk)} ${alg} ${join(dir, 'id.pub')}\n`);
}

function authConfig(opts, role) {
  if (opts['psk-file']) {
    if (!opts.name || !opts['peer-name']) throw new ConfigError('PSK mode needs --name and --peer-name');
    const n = Buffer.from(opts.name), p = Buffer.from(opts['peer-name']);
    if (n.length < 1 || n.length > 255 || p.length < 1 || p.length > 255) throw new ConfigError('names are 1..255 bytes');
    if (n.equals(p)) throw new ConfigError('--name and --peer-name must differ');
    return { mode: 'psk', psks: [readPsk(opts['psk-file'])], name: opts.name, peerName: opts['peer-name'] };
  }
  if (!opts.identity || !opts.peer) throw new ConfigError('ML-DSA mode needs --identity and --peer (or --psk-file)');
  const me = readIdentity(opts.identity);
  const peers = opts.peer.map((p) => readPublicKey(p).pk);
  if (peers.some((p) => p.equals(me.pk))) throw new ConfigError('a pinned peer key is this side\'s own key');
  if (role === 'initiator' && peers.length !== 1) throw new ConfigError('the initiator pins exactly one responder (--peer once)');
  return { mode: 'mldsa', alg: me.alg, sk: me.sk, pk: me.pk, peer: peers[0], peers };
}

function qkdConfig(opts, role) {
  const source = opts.qkd ?? 'off';
  const policy = POLICY[opts['qkd-policy'] ?? (source === 'off' ? 'off' : 'required')];
  if (policy === undefined) throw new ConfigError('unknown --qkd-policy');
  if (source === 'off') return { policy, qkd: null };
  if (source !== 'etsi014') throw new ConfigError('this peer supports --qkd off|etsi014');
  for (const f of ['kme-url', 'kme-ca', 'sae-cert', 'sae-key', 'sae-id', 'peer-sae-id']) if (!opts[f]) throw new ConfigError(`--qkd etsi014 needs --${f}`);
  const client = new Etsi014({ url: opts['kme-url'], ca: opts['kme-ca'], cert: opts['sae-cert'], key: opts['sae-key'] });
  return { policy, qkd: { source: client, saeId: opts['sae-id'], peerSaeId: opts['peer-sae-id'], keyBits: 256, role } };
}

function summary(res, opts) {
  // Only public values: never a key or a PSK.
  const line = {
    ok: true, role: res.role, suite: res.suite, auth: res.auth, local: res.local, peer: res.peer, qkd: res.qkd,
    qkd_reason: res.qkd_reason, qkd_key_ids: res.qkd_key_ids, transcript_hash: res.transcript_hash,
    key_fingerprint: res.key_fingerprint, out: opts.out, implementation: 'hybridkex-js',
  };
  if (opts.json) process.stdout.write(JSON.stringify(line) + '\n');
  else process.stderr.write(`hybridkex-js: key agreed (${res.suite}, QKD ${res.qkd}) ${res.key_fingerprint}\n`);
}

function exitCodeFor(e) {
  if (e instanceof ConfigError) return 2;
  if (e instanceof TimeoutError || e instanceof NetworkError) return 5;
  if (e instanceof PeerAlert) return ({ auth_failed: 3, unknown_peer: 3, qkd_policy: 4, qkd_unavailable: 4, qkd_replay: 4, timeout: 5 })[e.alertName] ?? 1;
  if (e instanceof ProtocolError) return e.exitCode ?? 1;
  return 1;
}

async function exchange(opts) {
  if (!opts.out) throw new ConfigError('--out is required');
  if (!!opts.listen === !!opts.connect) throw new ConfigError('give exactly one of --listen and --connect');
  const role = opts.connect ? 'initiator' : 'responder';
  const kemName = opts.kem ?? 'ml-kem-768';
  const auth = authConfig(opts, role);
  const { policy, qkd } = qkdConfig(opts, role);
  const journal = new Journal(opts['qkd-journal'] ?? null);
  const cfg = { kem: kemName, context: opts.context ?? '', qkdPolicy: policy, auth, qkd, journal, replay: new Map() };
  if (opts.suites) {
    cfg.suites = opts.suites.split(',').map((x) => Number(x));
    if (cfg.suites.some((x) => !SUITES[x])) throw new ConfigError('--suites: a list of suite numbers, e.g. 0x0003,0x0001');
  }
  const timeoutMs = Number(opts.timeout ?? 30) * 1000;
  const log = (m) => process.stderr.write(`hybridkex-js: ${m}\n`);
  let res;
  if (role === 'initiator') {
    const { host, port } = hostPort(opts.connect);
    const deadline = Date.now() + timeoutMs;
    const sock = await connect(host, port, Number(opts['connect-retry'] ?? 10), deadline);
    const fs_ = new FramedSocket(sock, deadline);
    try { res = await runInitiator(cfg, fs_, log); } catch (e) {
      if (e instanceof ProtocolError && !(e instanceof PeerAlert)) fs_.alert(e.alert);
      else if (e instanceof TimeoutError) fs_.alert(9);
      fs_.close(); throw e;
    }
    fs_.close();
  } else {
    res = await serve(opts, cfg, timeoutMs, log);
  }
  writeSecretFile(opts.out, res.exchangeKey);
  summary(res, opts);
}

/** Accept connections until one exchange succeeds, or one fails after the peer authenticated (§7.6). */
async function serve(opts, cfg, timeoutMs, log) {
  const { host, port } = hostPort(opts.listen);
  const acceptUntil = Date.now() + Number(opts['accept-timeout'] ?? 300) * 1000;
  const server = net.createServer({ pauseOnConnect: false });
  const queue = []; let wake = null; let lastError = null;
  server.on('connection', (s) => { s.setNoDelay(true); queue.push(s); if (wake) { const w = wake; wake = null; w(); } });
  await new Promise((resolve, reject) => { server.once('error', reject); server.listen(port, host, resolve); });
  const addr = server.address();
  process.stderr.write(`hybridkex-js: listening on ${addr.address}:${addr.port}\n`);
  try {
    for (let n = 0; n < 64; n++) {
      while (queue.length === 0) {
        const left = acceptUntil - Date.now();
        if (left <= 0) {
          throw new TimeoutError(lastError ? `no peer completed an exchange within --accept-timeout (last attempt: ${lastError.message})`
            : 'no peer connected within --accept-timeout');
        }
        await new Promise((r) => { const t = setTimeout(r, left); wake = () => { clearTimeout(t); r(); }; });
      }
      const sock = queue.shift();
      const conn = new FramedSocket(sock, Date.now() + timeoutMs);
      let authenticated = false;
      const logA = (m) => { if (m === 'initiator authenticated') authenticated = true; log(m); };
      try {
        const res = await runResponder(cfg, conn, logA);
        conn.close();
        return res;
      } catch (e) {
        if (e instanceof Silent) { sock.destroy(); log('dropped an InitHello without answer'); continue; }
        if (e instanceof ProtocolError && !(e instanceof PeerAlert)) conn.alert(e.alert);
        else if (e instanceof TimeoutError) conn.alert(9);
        conn.close();
        if (authenticated) throw e;
        log(`connection failed before the peer authenticated: ${e.message}`);
        lastError = e;
      }
    }
    throw lastError ?? new NetworkError('too many failed connections');
  } finally { server.close(); }
}

async function catkdfCmd(opts) {
  const { catkdf } = await import('./primitives.mjs');
  const d = JSON.parse(fs.readFileSync(opts._[1], 'utf8'));
  let ok = 0, bad = 0;
  for (const v of d.vectors) {
    if (v.combiner !== 'CatKDF') continue;
    const hx = (s) => Buffer.from(s ?? '', 'hex');
    const want = hx(v.key_material);
    const got = catkdf({ h: v.hash.toLowerCase(), kdf: v.kdf, psk: hx(v.psk), k1: hx(v.k1), k2: hx(v.k2), ma: hx(v.MA), mb: hx(v.MB),
      context: Buffer.from(v.info, 'utf8'), label: hx(v.label), length: want.length });
    if (got.equals(want)) ok++; else { bad++; process.stdout.write(JSON.stringify({ mismatch: v.cid, kdf: v.kdf, hash: v.hash }) + '\n'); }
  }
  process.stdout.write(JSON.stringify({ catkdf_vectors: ok + bad, passed: ok, failed: bad }) + '\n');
  return bad === 0 ? 0 : 1;
}

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  const cmd = opts._[0];
  if (cmd === 'catkdf') return catkdfCmd(opts);
  await loadOqs(opts['liboqs-js']);
  if (cmd === 'keygen') { await keygen(opts); return 0; }
  if (cmd === 'exchange') { await exchange(opts); return 0; }
  if (cmd === 'vectors') { const { runVectors } = await import('./vectors.mjs'); return runVectors(opts._[1]); }
  throw new ConfigError('usage: cli.mjs keygen|exchange|catkdf|vectors ...');
}

main().then((code) => process.exit(code ?? 0), (e) => {
  const code = exitCodeFor(e);
  const text = e instanceof PeerAlert ? e.message : (e.message || String(e));
  process.stderr.write(`hybridkex-js: error: ${text.replace(/\s+/g, ' ').slice(0, 300)}\n`);
  if (process.env.HKX_JS_DEBUG) process.stderr.write(`${e.stack}\n`);
  process.exit(code);
});
