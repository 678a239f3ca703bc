// Recompute the protocol's vector files (docs/vectors/*.json) with this implementation.
// Every value is derived here from the inputs and the specification; the only values taken
// from a file are those it says are randomized outputs (ML-KEM ciphertext and shared secret,
// ML-DSA signatures), which are checked instead (signatures must verify).  liboqs-js has no
// seeded key generation, so ML-KEM/ML-DSA keys from seeds cannot be recomputed: the public
// keys are taken from the frames and reported as "unchecked".
import fs from 'node:fs';
import { join } from 'node:path';
import {
  cat, enc, u8, vec16, hash, hmac, expand, catkdf, transcript, aeadSeal, aeadOpen, x25519, x25519Public,
  fingerprint, sig, SIGS, HASHES,
} from './primitives.mjs';
import {
  SUITES, AUTH_PSK, frame, T, parseInitHello, parseRespHello, encodeInitHelloPrefix, encodeRespHelloPub,
  parsePlain, Reader, readQkdBlock, encodeQkdBlock, uuidToBytes,
} from './wire.mjs';
import {
  L, PURPOSE, POLICY, computeMac1, mac1Key, blindId, pskMacKey, handshakeSecret, sessionSecret, outputs, exporter,
} from './handshake.mjs';

const hx = (s) => Buffer.from(s ?? '', 'hex');

class Checker {
  constructor(where) { this.where = where; this.ok = 0; this.bad = []; this.notes = []; }
  eq(what, got, want) {
    const g = Buffer.isBuffer(got) ? got.toString('hex') : String(got);
    const w = Buffer.isBuffer(want) ? want.toString('hex') : String(want);
    if (g === w) this.ok++; else this.bad.push(`${this.where}: ${what}: got ${g.slice(0, 64)}, file says ${w.slice(0, 64)}`);
  }
  truth(what, cond) { if (cond) this.ok++; else this.bad.push(`${this.where}: ${what}`); }
}

// -- component vectors ----------------------------------------------------------------------------

async function components(file, report) {
  const d = JSON.parse(fs.readFileSync(file, 'utf8')).vectors;
  for (const [i, v] of (d.catkdf ?? []).entries()) {
    const c = new Checker(`components/catkdf[${i}] ${v.kdf}-${v.hash}-${v.length}`);
    c.eq('output', catkdf({ h: v.hash, kdf: v.kdf.toUpperCase(), psk: hx(v.psk), k1: hx(v.k1), k2: hx(v.k2), ma: hx(v.ma), mb: hx(v.mb),
      context: hx(v.context), label: hx(v.label), length: v.length }), hx(v.output));
    report.push(c);
  }
  for (const [i, v] of (d.transcript_hash ?? []).entries()) {
    const c = new Checker(`components/transcript_hash[${i}]`);
    const parts = v.parts.map(hx);
    c.eq('output', transcript(v.hash, ...parts), hx(v.output));
    if (v.output_of_first_two) c.eq('output_of_first_two', transcript(v.hash, ...parts.slice(0, 2)), hx(v.output_of_first_two));
    report.push(c);
  }
  for (const [i, v] of (d.expand ?? []).entries()) {
    const c = new Checker(`components/expand[${i}]`);
    c.eq('output', expand(v.hash, hx(v.secret), v.label), hx(v.output));
    report.push(c);
  }
  for (const [i, v] of (d.aead_payload_keys ?? []).entries()) {
    const c = new Checker(`components/aead_payload_keys[${i}] ${v.label}`);
    const key = expand(v.hash, hx(v.hs), v.label).subarray(0, 32);
    c.eq('key', key, hx(v.key));
    c.eq('sealed', aeadSeal(key, hx(v.aad), hx(v.plaintext)), hx(v.sealed));
    report.push(c);
  }
  for (const [i, v] of (d.confirmations ?? []).entries()) {
    const c = new Checker(`components/confirmations[${i}] ${v.name}`);
    const key = expand(v.hash, hx(v.session), v.label);
    c.eq('key', key, hx(v.key));
    c.eq('output', hmac(v.hash, key, hx(v.transcript_hash)), hx(v.output));
    report.push(c);
  }
  for (const [i, v] of (d.psk_mac ?? []).entries()) {
    const c = new Checker(`components/psk_mac[${i}] ${v.purpose}`);
    const want = PURPOSE[v.purpose === 'responder fallback' ? 'fallback' : v.purpose]?.psk;
    c.eq('label is the §5.4 PSK MAC label', v.label, want);
    const key = pskMacKey(hx(v.psk), v.label, enc(v.name_I), enc(v.name_R));
    c.eq('mac_key', key, hx(v.mac_key));
    c.eq('tag', hmac('sha256', key, hx(v.transcript_hash)), hx(v.tag));
    report.push(c);
  }
  for (const [i, v] of (d.psk_blind ?? []).entries()) {
    const c = new Checker(`components/psk_blind[${i}]`);
    c.eq('K_blind', hmac('sha256', hx(v.psk), enc(L.blind), vec16(enc(v.name_I)), vec16(enc(v.name_R)), Buffer.from([1])), hx(v.K_blind));
    c.eq('output', blindId(hx(v.psk), enc(v.name_I), enc(v.name_R), hx(v.prefix)), hx(v.output));
    report.push(c);
  }
  for (const [i, v] of (d.mac1 ?? []).entries()) {
    const c = new Checker(`components/mac1[${i}]`);
    const body = hx(v.body);
    c.eq('key', mac1Key(hx(v.S_R)), hx(v.key));
    c.eq('output', computeMac1(hx(v.S_R), body.subarray(0, body.length - 32)), hx(v.output));
    report.push(c);
  }
  if (d.cookie) {
    const v = d.cookie; const c = new Checker('components/cookie');
    const cookie = hmac('sha256', hx(v.secret), enc(v.source_address)).subarray(0, 16);
    c.eq('cookie', cookie, hx(v.cookie));
    const key = hash('sha256', enc(L.cookie), hx(v.S_R));
    c.eq('cookie_key', key, hx(v.cookie_key));
    c.eq('sealed_cookie', aeadSeal(key, hx(v.mac1), cookie, hx(v.nonce)), hx(v.sealed_cookie));
    const body = hx(v.body);
    c.eq('mac1 of body', computeMac1(hx(v.S_R), body.subarray(0, body.length - 32)), hx(v.mac1));
    c.eq('mac2', hmac('sha256', cookie, body.subarray(0, body.length - 16)).subarray(0, 16), hx(v.mac2));
    report.push(c);
  }
  for (const [i, v] of (d.outputs ?? []).entries()) {
    const c = new Checker(`components/outputs[${i}] ${v.hash}`);
    const suite = Number(Object.keys(SUITES).find((s) => SUITES[s].h === v.hash));
    const idI = enc(v.id_I); const idR = enc(v.id_R);
    const o = outputs(suite, hx(v.session), idI, idR);
    c.eq('application_secret', o.application, hx(v.application_secret));
    c.eq('exchange_key', o.exchangeKey, hx(v.exchange_key));
    c.eq('ratchet_secret', expand(v.hash, hx(v.session), L.ratchet), hx(v.ratchet_secret));
    c.eq('ratchet_next_psk', o.nextPsk, hx(v.ratchet_next_psk));
    for (const e of v.exports ?? []) c.eq(`export(${e.label}, ${e.length})`, exporter(suite, o.application, e.label, e.length), hx(e.output));
    report.push(c);
  }
  for (const [i, v] of (d.key_fingerprint ?? []).entries()) {
    const c = new Checker(`components/key_fingerprint[${i}]`);
    c.eq('output', fingerprint(hx(v.key)), v.output);
    report.push(c);
  }
  for (const k of Object.keys(d)) {
    if (!['catkdf', 'transcript_hash', 'expand', 'aead_payload_keys', 'confirmations', 'psk_mac', 'psk_blind', 'mac1', 'cookie', 'outputs', 'key_fingerprint'].includes(k)) {
      const c = new Checker(`components/${k}`); c.notes.push('not recomputed: a plugin binding outside docs/protocol.md'); report.push(c);
    }
  }
}

// -- whole-handshake vectors ----------------------------------------------------------------------

async function handshake(v, report) {
  const c = new Checker(`handshakes/${v.id}`);
  report.push(c);
  const inp = v.inputs;
  const frames = Object.fromEntries(v.frames.map((f) => [f.name, hx(f.hex)]));
  const suite = inp.suite; const { h } = SUITES[suite];
  const psk = inp.psk ?? null;
  const bodyOf = (f) => f.subarray(8);
  // InitHello: everything but the ML-KEM key is recomputed; the frame is rebuilt byte for byte.
  const ih = frames.IH; const m = parseInitHello(bodyOf(ih));
  const xI = x25519Public(hx(inp.initiator.x25519_private));
  const xR = x25519Public(hx(inp.responder.x25519_private));
  c.eq('IH x25519 = X25519(x_I, 9)', m.x25519, xI);
  const policyI = POLICY[inp.initiator_qkd_policy]; const policyR = POLICY[inp.responder_qkd_policy];
  const authKind = psk ? AUTH_PSK : SIGS[v.auth].kind;
  const prefix = encodeInitHelloPrefix({ timestamp: inp.timestamp, nonce: hx(inp.initiator.nonce), suites: inp.initiator_suites, authKind,
    qkdPolicy: policyI, context: hx(inp.context), x25519: xI, kemKey: m.kemKey });
  c.eq('IH prefix', prefix, m.prefix);
  const names = psk ? { nameI: enc(psk.initiator_name), nameR: enc(psk.responder_name) } : null;
  const ids = psk ? psk.initiator_keys.map((k) => blindId(hx(k), names.nameI, names.nameR, prefix)) : [];
  const head = cat(prefix, u8(ids.length), ...ids);
  // RespHello
  const rh = frames.RH; const r = parseRespHello(bodyOf(rh));
  c.eq('RH x25519 = X25519(x_R, 9)', r.x25519, xR);
  const k1 = x25519(hx(inp.initiator.x25519_private), xR);
  c.eq('k1 both ways', x25519(hx(inp.responder.x25519_private), xI), k1);
  const k2 = hx(v.recorded.ml_kem_shared_secret);
  let choice = 0xff;
  if (psk) {
    choice = -1;
    for (const k of psk.responder_keys) {
      const b = blindId(hx(k), names.nameI, names.nameR, prefix);
      const i = ids.findIndex((x) => x.equals(b)); if (i >= 0) { choice = i; break; }
    }
  }
  const rhPub = encodeRespHelloPub({ nonce: hx(inp.responder.nonce), suite, qkdPolicy: policyR, x25519: xR, kemCiphertext: r.kemCiphertext, pskChoice: choice });
  c.eq('RH_pub', rhPub, r.pub);
  const hs = handshakeSecret(suite, k1, k2, ih, rhPub);
  const rhPlain = aeadOpen(expand(h, hs, L.rhKey).subarray(0, 32), transcript(h, ih, rhPub), r.sealed);
  const [identityR, tagR] = parsePlain(rhPlain, 'RH_plain', [16, 16]);
  const sR = psk ? names.nameR : identityR;
  const mac1 = computeMac1(sR, head);
  let mac2 = Buffer.alloc(16);
  if (frames.IH_first || frames.CR) {
    // The cookie vector: the first InitHello (mac2 zero), the CookieReply, the retried InitHello (§4.7, §8).
    const ck = inp.cookie ?? {};
    const cookie = hmac('sha256', hx(ck.secret), enc(ck.source_address)).subarray(0, 16);
    if (v.cookie?.cookie) c.eq('cookie', cookie, hx(v.cookie.cookie));
    const cookieKey = hash('sha256', enc(L.cookie), sR);
    if (v.cookie?.cookie_key) c.eq('cookie_key', cookieKey, hx(v.cookie.cookie_key));
    c.eq('first InitHello frame', frame(T.InitHello, cat(head, mac1, Buffer.alloc(16))), frames.IH_first);
    const nonce = hx(inp.responder.cookie_nonce);
    c.eq('CookieReply frame', frame(T.CookieReply, cat(nonce, aeadSeal(cookieKey, mac1, cookie, nonce))), frames.CR);
    mac2 = hmac('sha256', cookie, cat(head, mac1)).subarray(0, 16);
    if (v.cookie?.mac2) c.eq('mac2', mac2, hx(v.cookie.mac2));
  }
  c.eq('InitHello frame', frame(T.InitHello, cat(head, mac1, mac2)), ih);
  if (v.mac1) c.eq('mac1', mac1, hx(v.mac1.output));
  c.eq('RespHello frame', frame(T.RespHello, cat(rhPub, vec16(aeadSeal(expand(h, hs, L.rhKey).subarray(0, 32), transcript(h, ih, rhPub), rhPlain)))), rh);
  const usedPsk = psk ? hx(psk.initiator_keys[choice]) : null;
  const tag = async (purpose, th, t, pk) => {
    if (psk) { c.eq(`${purpose} tag`, hmac('sha256', pskMacKey(usedPsk, PURPOSE[purpose].psk, names.nameI, names.nameR), th), t); return; }
    const alg = Object.keys(SIGS).find((a) => SIGS[a].pk === pk.length);
    c.truth(`${purpose} signature verifies`, alg && (await sig(alg)).verify(pk, cat(enc(PURPOSE[purpose].sig), th), t));
  };
  await tag('responder', transcript(h, ih, rhPub, vec16(identityR)), tagR, identityR);
  // InitFinish
  const ifr = frames.IF;
  const ifRd = new Reader(bodyOf(ifr), 'IF'); const ifSealed = ifRd.vec16(); ifRd.end();
  const ifPlain = aeadOpen(expand(h, hs, L.ifKey).subarray(0, 32), transcript(h, ih, rh), ifSealed);
  const pr = new Reader(ifPlain, 'IF_plain'); const identityI = pr.vec16(); const block = readQkdBlock(pr);
  const ifCore = ifPlain.subarray(0, pr.off); const tagI = pr.vec16(); const confirmI = pr.vec8(); pr.end();
  const q = inp.qkd ?? {};
  const agreed = policyI !== 0 && policyR !== 0;
  const expectStatus = !agreed ? 0 : (v.id.includes('initiator-unavailable') ? 2 : 1);
  c.eq('QKD block status', block.status, expectStatus);
  if (block.status === 1) {
    c.eq('QKD block', block.bytes, encodeQkdBlock({ status: 1, reason: 0, masterSaeId: q.master_sae_id, slaveSaeId: q.slave_sae_id, keyBits: q.key_bits, keyIds: [uuidToBytes(q.key_id)] }));
  }
  if (block.status === 0) c.notes.push(`QKD off block: master '${block.masterSaeId}' slave '${block.slaveSaeId}' key_bits ${block.keyBits}`);
  if (psk) c.truth('no identities in PSK mode', identityI.length === 0 && identityR.length === 0);
  await tag('initiator', transcript(h, ih, rh, ifCore), tagI, identityI);
  const idI = psk ? names.nameI : identityI; const idR = psk ? names.nameR : identityR;
  const Q = block.status === 1 ? hx(q.key) : Buffer.alloc(0);
  const ma = cat(ih, ifCore, vec16(tagI)); const mb = cat(rhPub, rhPlain);
  const session = sessionSecret(suite, { q: Q, k1, k2, idI, idR, blockFinal: block.bytes, ma, mb });
  const cI = hmac(h, expand(h, session, L.initFinished), transcript(h, ih, rh, cat(ifCore, vec16(tagI))));
  c.eq('confirm_I', confirmI, cI);
  c.eq('InitFinish frame', frame(T.InitFinish, vec16(aeadSeal(expand(h, hs, L.ifKey).subarray(0, 32), transcript(h, ih, rh), cat(ifCore, vec16(tagI), u8(cI.length), cI)))), ifr);
  // RespFinish
  const rf = frames.RF;
  const rfRd = new Reader(bodyOf(rf), 'RF'); const rfSealed = rfRd.vec16(); rfRd.end();
  const rfPlain = aeadOpen(expand(h, hs, L.rfKey).subarray(0, 32), transcript(h, ih, rh, ifr), rfSealed);
  const fr = new Reader(rfPlain, 'RF_plain'); const outcome = fr.u8(); const reason = fr.u8(); const tagF = fr.vec16(); const confirmR = fr.vec8(); fr.end();
  const rfCore = rfPlain.subarray(0, 2);
  let final = session; const all = [ih, rh, ifr, rf];
  if (outcome === 0) {
    c.eq('confirm_R', confirmR, hmac(h, expand(h, session, L.respFinished), transcript(h, ih, rh, ifr, cat(rfCore, vec16(tagF)))));
  } else {
    c.truth('fallback only in a fallback vector', v.id.includes('fallback'));
    await tag('fallback', transcript(h, ih, rh, ifr, rfCore), tagF, identityR);
    const finalBlock = encodeQkdBlock({ ...block, status: 2, reason });
    final = sessionSecret(suite, { q: Buffer.alloc(0), k1, k2, idI, idR, blockFinal: finalBlock, ma, mb: cat(mb, rfCore, vec16(tagF)) });
    c.eq('fallback confirm_R', confirmR, hmac(h, expand(h, final, L.respFinished), transcript(h, ih, rh, ifr, cat(rfCore, vec16(tagF)))));
    const ic = frames.IC;
    c.truth('an InitConfirm after a fallback', !!ic);
    const cF = hmac(h, expand(h, final, L.initConfirm), transcript(h, ih, rh, ifr, rf));
    c.eq('InitConfirm frame', frame(T.InitConfirm, vec16(aeadSeal(expand(h, hs, L.icKey).subarray(0, 32), transcript(h, ih, rh, ifr, rf), cat(u8(cF.length), cF)))), ic);
    all.push(ic);
  }
  c.eq('RespFinish frame', frame(T.RespFinish, vec16(aeadSeal(expand(h, hs, L.rfKey).subarray(0, 32), transcript(h, ih, rh, ifr), rfPlain))), rf);
  // steps the file names: the CatKDF stages, and the ML-DSA message labels
  for (const s of v.steps) {
    if (s.step === 'tag' && s.message_label) {
      const purpose = s.purpose === 'responder fallback' ? 'fallback' : s.purpose;
      c.eq(`step tag ${s.purpose} message_label`, s.message_label, PURPOSE[purpose].sig);
    }
    if (s.step === 'catkdf') {
      const mine = { hs, session, session_fallback: final }[s.name];
      if (mine) c.eq(`step catkdf ${s.name}`, mine, hx(s.output));
    }
  }
  // outputs
  const o = outputs(suite, final, idI, idR);
  const out = v.outputs;
  c.eq('final_session', final, hx(out.final_session));
  c.eq('application_secret', o.application, hx(out.application_secret));
  c.eq('exchange_key', o.exchangeKey, hx(out.exchange_key));
  c.eq('ratchet_next_psk', o.nextPsk, hx(out.ratchet_next_psk));
  c.eq('key_fingerprint', fingerprint(o.exchangeKey), out.key_fingerprint);
  if (out.export) c.eq('export', exporter(suite, o.application, out.export.label, out.export.length), hx(out.export.output));
  c.eq('transcript_hash', transcript(h, ...all), hx(out.transcript_hash));
  c.notes.push('unchecked: ML-KEM ek/dk and ML-DSA keys from seeds (liboqs-js has no seeded key generation); Decaps of the recorded ciphertext');
}

export async function runVectors(dir) {
  const report = [];
  const comp = join(dir, 'hybridkex-v2-components.json');
  const hs = join(dir, 'hybridkex-v2-handshakes.json');
  if (fs.existsSync(comp)) await components(comp, report);
  if (fs.existsSync(hs)) {
    for (const v of JSON.parse(fs.readFileSync(hs, 'utf8')).vectors) {
      try { await handshake(v, report); } catch (e) {
        const c = new Checker(`handshakes/${v.id}`); c.bad.push(`${c.where}: ${e.message}`); report.push(c);
      }
    }
  }
  let ok = 0; const bad = [];
  for (const c of report) { ok += c.ok; bad.push(...c.bad); }
  for (const b of bad) process.stdout.write(JSON.stringify({ mismatch: b }) + '\n');
  const notes = [...new Set(report.flatMap((c) => c.notes))];
  process.stdout.write(JSON.stringify({ vector_groups: report.length, checks_passed: ok, mismatches: bad.length, notes }) + '\n');
  return bad.length === 0 && report.length > 0 ? 0 : 1;
}
