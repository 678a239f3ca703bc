// The key schedule (§5, §6) and both roles' state machines (§7) of hybridkex wire v2.
import {
  cat, enc, u8, vec16, hash, hmac, expand, expandKey32, catkdf, transcript, aeadSeal, aeadOpen,
  x25519, x25519Public, random, timingSafeEqual, kem, sig, SIGS, sigByKind, KEMS, fingerprint, hkdfExpand,
} from './primitives.mjs';
import {
  T, A, SUITES, AUTH_PSK, ProtocolError, PeerAlert, frame, encodeInitHelloPrefix, parseInitHello,
  encodeRespHelloPub, parseRespHello, parsePlain, encodeQkdBlock, readQkdBlock, Reader, bytesToUuid,
} from './wire.mjs';

export const L = {
  handshake: 'hybridkex v2 handshake',
  hsSalt: 'hybridkex v2 catkdf handshake salt',
  session: 'hybridkex v2 session',
  sessionSalt: 'hybridkex v2 catkdf session salt',
  rhKey: 'hybridkex v2 resp hello key',
  ifKey: 'hybridkex v2 init finish key',
  rfKey: 'hybridkex v2 resp finish key',
  icKey: 'hybridkex v2 init confirm key',
  initFinished: 'hybridkex v2 init finished',
  respFinished: 'hybridkex v2 resp finished',
  initConfirm: 'hybridkex v2 init confirm',
  application: 'hybridkex v2 application secret',
  exchangeKey: 'hybridkex v2 exchange key',
  ratchet: 'hybridkex v2 ratchet secret',
  ratchetNext: 'hybridkex v2 ratchet next psk',
  exporter: 'hybridkex v2 exporter',
  mac1: 'hybridkex v2 mac1',
  cookie: 'hybridkex v2 cookie',
  blind: 'hybridkex v2 psk blind',
};
export const PURPOSE = {
  responder: { sig: 'hybridkex v2 responder signature', psk: 'hybridkex v2 psk mac responder' },
  initiator: { sig: 'hybridkex v2 initiator signature', psk: 'hybridkex v2 psk mac initiator' },
  fallback: { sig: 'hybridkex v2 responder fallback signature', psk: 'hybridkex v2 psk mac responder fallback' },
};
export const POLICY = { off: 0, preferred: 1, required: 2 };
export const POLICY_NAME = ['off', 'preferred', 'required'];
const QKD_STATUS = ['off', 'used', 'unavailable'];
const QKD_REASON = ['none', 'source failed or unreachable', 'link aborted (high QBER)', 'no source', 'no key material'];

// -- §5 building blocks --------------------------------------------------------------------------

export function mac1Key(sR) { return hash('sha256', enc(L.mac1), sR); }
export function computeMac1(sR, bodyWithoutMacs) { return hmac('sha256', mac1Key(sR), bodyWithoutMacs).subarray(0, 16); }
export function blindId(psk, nameI, nameR, prefix) {
  const kBlind = hmac('sha256', psk, enc(L.blind), vec16(nameI), vec16(nameR), Buffer.from([1]));
  return hmac('sha256', kBlind, prefix).subarray(0, 16);
}
export function pskMacKey(psk, label, nameI, nameR) {
  return hmac('sha256', psk, enc(label), vec16(nameI), vec16(nameR), Buffer.from([1]));
}

/**
 * §5.4 tag.  ML-DSA: Sign(sk, label || TH).  PSK: HMAC-SHA256(K, M) where the purpose's PSK MAC
 * label is in K only and M is the transcript hash alone.  (The text writes "HMAC-SHA256(K, M)"
 * right after defining M = label || TH for ML-DSA; hybridkex verifies only M = TH.  See the report.)
 */
export function pskTagMessage(purpose, th) { return th; }

export async function makeTag(auth, purpose, th, names) {
  if (auth.mode === 'psk') {
    return hmac('sha256', pskMacKey(auth.usedPsk, PURPOSE[purpose].psk, names.nameI, names.nameR), pskTagMessage(purpose, th));
  }
  const s = await sig(auth.alg);
  return s.sign(auth.sk, cat(enc(PURPOSE[purpose].sig), th));
}

export async function checkTag(auth, purpose, th, tag, names, peerPk) {
  if (auth.mode === 'psk') {
    const want = hmac('sha256', pskMacKey(auth.usedPsk, PURPOSE[purpose].psk, names.nameI, names.nameR), pskTagMessage(purpose, th));
    return timingSafeEqual(want, tag);
  }
  const alg = Object.keys(SIGS).find((k) => SIGS[k].pk === peerPk.length);
  if (!alg) return false;
  return (await sig(alg)).verify(peerPk, cat(enc(PURPOSE[purpose].sig), th), tag);
}

// -- §6 key schedule ------------------------------------------------------------------------------

export function handshakeSecret(suite, k1, k2, ih, rhPub) {
  const s = SUITES[suite];
  return catkdf({ h: s.h, kdf: s.kdf, psk: Buffer.alloc(0), k1, k2, ma: ih, mb: rhPub,
    context: enc(L.handshake), label: enc(L.hsSalt) });
}

export function sessionSecret(suite, { q, k1, k2, idI, idR, blockFinal, ma, mb }) {
  const s = SUITES[suite];
  const context = cat(enc(L.session), vec16(idI), vec16(idR), blockFinal);
  return catkdf({ h: s.h, kdf: s.kdf, psk: q, k1, k2, ma, mb, context, label: enc(L.sessionSalt) });
}

export function outputs(suite, session, idI, idR) {
  const { h } = SUITES[suite];
  const application = expand(h, session, L.application);
  const exchangeKey = expand(h, session, L.exchangeKey).subarray(0, 32);
  const ratchet = expand(h, session, L.ratchet);
  const nextPsk = hmac(h, ratchet, enc(L.ratchetNext), vec16(idI), vec16(idR), Buffer.from([1])).subarray(0, 32);
  return { application, exchangeKey, nextPsk };
}

export function exporter(suite, application, label, length) {
  const { h } = SUITES[suite];
  return hkdfExpand(h, application, cat(enc(L.exporter), vec16(enc(label)), Buffer.from([length >> 8, length & 0xff])), length);
}

// -- result ---------------------------------------------------------------------------------------

function result({ role, suite, auth, peerId, block, qkdUsed, frames, exchangeKey, fallbackReason }) {
  const s = SUITES[suite];
  const th = transcript(s.h, ...frames);
  const status = block.status;
  return {
    role,
    suite: `x25519+${s.kem}/${s.kdf.toLowerCase()}-${s.h}`,
    auth: auth.mode === 'psk' ? 'psk' : auth.peerAlg,
    local: auth.mode === 'psk' ? `psk:${auth.name}` : fingerprint(auth.pk),
    peer: auth.mode === 'psk' ? `psk:${auth.peerName}` : fingerprint(peerId),
    qkd: qkdUsed ? 'used' : QKD_STATUS[status === 1 ? 2 : status],
    qkd_reason: fallbackReason !== undefined ? QKD_REASON[fallbackReason] : (status === 2 ? QKD_REASON[block.reason] : ''),
    qkd_key_ids: qkdUsed ? block.keyIds.map(bytesToUuid) : [],
    transcript_hash: th.toString('hex'),
    key_fingerprint: fingerprint(exchangeKey),
    exchangeKey,
  };
}

// -- shared checks --------------------------------------------------------------------------------

function policyClash(a, b) {
  return (a === POLICY.required && b === POLICY.off) || (b === POLICY.required && a === POLICY.off);
}

function checkQkdBlockAgreement(block, agreed, either) {
  if (agreed && block.status === 0) throw new ProtocolError(A.bad_message, 'QKD block status off although QKD was agreed');
  if (!agreed && block.status !== 0) throw new ProtocolError(A.bad_message, 'QKD block status not off although QKD was not agreed');
  if (block.status === 2 && either) throw new ProtocolError(A.qkd_policy, 'the initiator had no QKD key and a QKD policy is required', { exitCode: 4 });
  if (block.status === 1 && block.keyIds.length !== 1) throw new ProtocolError(A.bad_message, 'this version asks for exactly one QKD key');
}

// -- Initiator ------------------------------------------------------------------------------------

/**
 * cfg: { kem, suites?, context, qkdPolicy, auth, qkd: {source, saeId, peerSaeId, keyBits} | null, journal }
 * auth: { mode: 'psk', psks: [Buffer], name, peerName } | { mode: 'mldsa', alg, sk, pk, peer }
 * io: { send(buf), recv() -> {type, body, raw}, waitClose(ms) }
 */
export async function runInitiator(cfg, io, log = () => {}) {
  const kemName = cfg.kem;
  const suites = cfg.suites ?? Object.keys(SUITES).map(Number).filter((s) => SUITES[s].kem === kemName);
  const K = await kem(kemName);
  const xSk = random(32);
  const xPk = x25519Public(xSk);
  const { ek, dk } = K.keypair();
  const auth = { ...cfg.auth };
  let sR, authKind, names;
  if (auth.mode === 'psk') {
    names = { nameI: enc(auth.name), nameR: enc(auth.peerName) };
    sR = names.nameR;
    authKind = AUTH_PSK;
  } else {
    names = null;
    sR = auth.peer;
    authKind = SIGS[auth.alg].kind;
  }
  const prefix = encodeInitHelloPrefix({ timestamp: Math.floor(Date.now() / 1000), nonce: random(32), suites, authKind,
    qkdPolicy: cfg.qkdPolicy, context: enc(cfg.context), x25519: xPk, kemKey: ek });
  const ids = auth.mode === 'psk' ? auth.psks.slice(0, 4).map((k) => blindId(k, names.nameI, names.nameR, prefix)) : [];
  const head = cat(prefix, u8(ids.length), ...ids);
  const mac1 = computeMac1(sR, head);
  let ihBody = cat(head, mac1, Buffer.alloc(16));
  let ih = frame(T.InitHello, ihBody);
  io.send(ih);
  let cookieUsed = false;
  let msg;
  for (;;) {
    msg = await io.recv();
    if (msg.type === T.CookieReply && !cookieUsed) {
      cookieUsed = true;
      const r = new Reader(msg.body, 'CookieReply');
      const nonce = r.take(12); const sealed = r.take(32); r.end();
      let cookie;
      try { cookie = aeadOpen(hash('sha256', enc(L.cookie), sR), mac1, sealed, nonce); } catch {
        throw new ProtocolError(A.bad_message, 'a CookieReply that does not open');
      }
      const withoutMac2 = cat(head, mac1);
      ihBody = cat(withoutMac2, hmac('sha256', cookie, withoutMac2).subarray(0, 16));
      ih = frame(T.InitHello, ihBody);
      log('answering a CookieReply');
      io.send(ih);
      continue;
    }
    break;
  }
  if (msg.type !== T.RespHello) throw new ProtocolError(A.bad_message, `expected RespHello, got message type ${msg.type}`);
  const rh = msg.raw;
  const m = parseRespHello(msg.body);
  if (!suites.includes(m.suite)) throw new ProtocolError(A.no_common_suite, `the responder chose suite ${m.suite}, which was not offered`);
  const suite = m.suite; const { h } = SUITES[suite];
  if (m.x25519.length !== 32) throw new ProtocolError(A.bad_message, 'the responder\'s X25519 key is not 32 bytes');
  if (m.kemCiphertext.length !== K.ct) throw new ProtocolError(A.bad_message, 'ML-KEM ciphertext of the wrong length');
  if (auth.mode === 'psk') {
    if (m.pskChoice >= ids.length) throw new ProtocolError(A.bad_message, 'psk_choice out of range');
    auth.usedPsk = auth.psks[m.pskChoice];
    auth.usedIndex = m.pskChoice;
  } else if (m.pskChoice !== 0xff) throw new ProtocolError(A.bad_message, 'psk_choice is not 0xFF in ML-DSA mode');
  if (policyClash(cfg.qkdPolicy, m.qkdPolicy)) throw new ProtocolError(A.qkd_policy, 'the QKD policies clash (required vs off)', { exitCode: 4 });
  let k1;
  try { k1 = x25519(xSk, m.x25519); } catch (e) { throw new ProtocolError(A.bad_message, e.message); }
  const k2 = K.decaps(dk, m.kemCiphertext);
  const hs = handshakeSecret(suite, k1, k2, ih, m.pub);
  let rhPlain;
  try { rhPlain = aeadOpen(expandKey32(h, hs, L.rhKey), transcript(h, ih, m.pub), m.sealed); } catch {
    throw new ProtocolError(A.auth_failed, 'RespHello\'s sealed payload does not open (handshake key confirmation failed)', { exitCode: 3 });
  }
  const [identityR, tagR] = parsePlain(rhPlain, 'RespHello payload', [16, 16]);
  let idI, idR;
  if (auth.mode === 'psk') {
    if (identityR.length !== 0) throw new ProtocolError(A.bad_message, 'a responder identity in PSK mode');
    idI = names.nameI; idR = names.nameR;
  } else {
    if (!identityR.equals(auth.peer)) throw new ProtocolError(A.unknown_peer, 'the responder presented a key that is not the pinned one', { exitCode: 3 });
    if (identityR.equals(auth.pk)) throw new ProtocolError(A.unknown_peer, 'the responder presented this side\'s own key', { exitCode: 3 });
    idI = auth.pk; idR = identityR;
    auth.peerAlg = Object.keys(SIGS).find((k) => SIGS[k].pk === identityR.length);
  }
  if (!(await checkTag(auth, 'responder', transcript(h, ih, m.pub, vec16(identityR)), tagR, names, identityR))) {
    throw new ProtocolError(A.auth_failed, 'the responder\'s tag does not verify', { exitCode: 3 });
  }
  log('responder authenticated');
  // QKD as master SAE, only now.
  const agreed = cfg.qkdPolicy !== POLICY.off && m.qkdPolicy !== POLICY.off;
  const either = cfg.qkdPolicy === POLICY.required || m.qkdPolicy === POLICY.required;
  const qkd = cfg.qkd ?? {};
  const keyBits = qkd.keyBits ?? 256;
  let block; let q = Buffer.alloc(0);
  if (!agreed) {
    block = { status: 0, reason: 0, masterSaeId: qkd.saeId ?? '', slaveSaeId: qkd.peerSaeId ?? '', keyBits, keyIds: [] };
  } else {
    try {
      if (!qkd.source) throw Object.assign(new Error('no QKD source'), { reason: 3 });
      const { keyIds, keys } = await qkd.source.encKeys(qkd.peerSaeId, keyBits, 1);
      if (cfg.journal) cfg.journal.record('master', keyIds);
      block = { status: 1, reason: 0, masterSaeId: qkd.saeId, slaveSaeId: qkd.peerSaeId, keyBits, keyIds };
      q = cat(...keys);
    } catch (e) {
      if (e instanceof ProtocolError) throw e;
      if (either) throw new ProtocolError(A.qkd_policy, `could not get a QKD key (${e.message}) and the QKD policy is required`, { exitCode: 4 });
      log(`no QKD key: ${e.message}`);
      block = { status: 2, reason: e.reason ?? 1, masterSaeId: qkd.saeId ?? '', slaveSaeId: qkd.peerSaeId ?? '', keyBits, keyIds: [] };
    }
  }
  const blockBytes = encodeQkdBlock(block);
  const ifCore = cat(vec16(auth.mode === 'psk' ? Buffer.alloc(0) : auth.pk), blockBytes);
  const tagI = await makeTag(auth, 'initiator', transcript(h, ih, rh, ifCore), names);
  const ma = cat(ih, ifCore, vec16(tagI));
  const mb = cat(m.pub, rhPlain);
  const session = sessionSecret(suite, { q, k1, k2, idI, idR, blockFinal: blockBytes, ma, mb });
  const confirmI = hmac(h, expand(h, session, L.initFinished), transcript(h, ih, rh, cat(ifCore, vec16(tagI))));
  const ifPlain = cat(ifCore, vec16(tagI), u8(confirmI.length), confirmI);
  const ifr = frame(T.InitFinish, vec16(aeadSeal(expandKey32(h, hs, L.ifKey), transcript(h, ih, rh), ifPlain)));
  io.send(ifr);
  const rfMsg = await io.recv();
  if (rfMsg.type !== T.RespFinish) throw new ProtocolError(A.bad_message, `expected RespFinish, got message type ${rfMsg.type}`);
  const rf = rfMsg.raw;
  const rr = new Reader(rfMsg.body, 'RespFinish'); const rfSealed = rr.vec16(); rr.end();
  let rfPlain;
  try { rfPlain = aeadOpen(expandKey32(h, hs, L.rfKey), transcript(h, ih, rh, ifr), rfSealed); } catch {
    throw new ProtocolError(A.auth_failed, 'RespFinish does not open', { exitCode: 3 });
  }
  const fr = new Reader(rfPlain, 'RespFinish payload');
  const outcome = fr.u8(); const reason = fr.u8(); const tagF = fr.vec16(); const confirmR = fr.vec8(); fr.end();
  const rfCore = rfPlain.subarray(0, 2);
  if (outcome === 0) {
    if (reason !== 0 || tagF.length !== 0) fr.bad('outcome 0 with a reason or a tag');
    const want = hmac(h, expand(h, session, L.respFinished), transcript(h, ih, rh, ifr, cat(rfCore, vec16(tagF))));
    if (!timingSafeEqual(want, confirmR)) throw new ProtocolError(A.auth_failed, 'the responder\'s key confirmation failed', { exitCode: 3 });
    const out = outputs(suite, session, idI, idR);
    return { ...result({ role: 'initiator', suite, auth, peerId: idR, block, qkdUsed: block.status === 1, frames: [ih, rh, ifr, rf], exchangeKey: out.exchangeKey }), out, authState: auth, qkdFed: q.length > 0 };
  }
  if (outcome !== 2 || reason === 0 || tagF.length === 0) fr.bad('an outcome other than 0 or a well-formed fallback');
  if (block.status !== 1) throw new ProtocolError(A.bad_message, 'a fallback RespFinish although no QKD key was used');
  if (either) throw new ProtocolError(A.qkd_policy, 'the responder could not get the QKD key and the QKD policy is required', { exitCode: 4 });
  if (!(await checkTag(auth, 'fallback', transcript(h, ih, rh, ifr, rfCore), tagF, names, idR))) {
    throw new ProtocolError(A.auth_failed, 'the responder\'s fallback tag does not verify', { exitCode: 3 });
  }
  const finalBlock = encodeQkdBlock({ ...block, status: 2, reason });
  const session2 = sessionSecret(suite, { q: Buffer.alloc(0), k1, k2, idI, idR, blockFinal: finalBlock, ma, mb: cat(mb, rfCore, vec16(tagF)) });
  const want = hmac(h, expand(h, session2, L.respFinished), transcript(h, ih, rh, ifr, cat(rfCore, vec16(tagF))));
  if (!timingSafeEqual(want, confirmR)) throw new ProtocolError(A.auth_failed, 'the responder\'s fallback key confirmation failed', { exitCode: 3 });
  const confirmF = hmac(h, expand(h, session2, L.initConfirm), transcript(h, ih, rh, ifr, rf));
  const ic = frame(T.InitConfirm, vec16(aeadSeal(expandKey32(h, hs, L.icKey), transcript(h, ih, rh, ifr, rf), cat(u8(confirmF.length), confirmF))));
  io.send(ic);
  await io.lastMessageGrace();
  const out = outputs(suite, session2, idI, idR);
  return { ...result({ role: 'initiator', suite, auth, peerId: idR, block: { ...block, status: 2, reason }, qkdUsed: false, frames: [ih, rh, ifr, rf, ic], exchangeKey: out.exchangeKey, fallbackReason: reason }), out, authState: auth, qkdFed: false };
}

// -- Responder ------------------------------------------------------------------------------------

/** Thrown for InitHellos that are dropped without any answer (§7.1 steps 1 and 3). */
export class Silent extends Error {}

/**
 * cfg: { kem (accepted KEM), suites?, context, qkdPolicy, auth, qkd, journal, replay: Map, freshness }
 * auth: { mode: 'psk', psks: [Buffer], name, peerName } | { mode: 'mldsa', alg, sk, pk, peers: [Buffer] }
 */
export async function runResponder(cfg, io, log = () => {}) {
  const accepted = cfg.suites ?? Object.keys(SUITES).map(Number).filter((s) => SUITES[s].kem === cfg.kem);
  const auth = { ...cfg.auth };
  const sR = auth.mode === 'psk' ? enc(auth.name) : auth.pk;
  const first = await io.recv();
  if (first.type !== T.InitHello) throw new Silent(`first message of type ${first.type}`);
  const ih = first.raw; const body = first.body;
  let m;
  try { m = parseInitHello(body); } catch (e) { throw new Silent(`unparsable InitHello: ${e.message}`); }
  // 1. mac1, before anything else.
  if (!timingSafeEqual(computeMac1(sR, body.subarray(0, body.length - 32)), m.mac1)) throw new Silent('InitHello with a wrong mac1');
  // 3. freshness, replay (no load, so no cookie; no rate limit across a single-exchange listener).
  const now = Date.now() / 1000;
  if (Math.abs(now - Number(m.timestamp)) > 120) throw new Silent('stale InitHello');
  const replayKey = hash('sha256', body.subarray(0, body.length - 32)).toString('hex');
  if (cfg.replay) {
    for (const [k, t] of cfg.replay) if (now - t > 240) cfg.replay.delete(k);
    if (cfg.replay.has(replayKey)) throw new Silent('replayed InitHello');
    if (cfg.replay.size < 4096) cfg.replay.set(replayKey, now);
  }
  log(`InitHello offers suites ${m.suites.map((x) => `0x${x.toString(16).padStart(4, '0')}`).join(',')}`);
  // 4. suite
  const suite = m.suites.find((s) => accepted.includes(s));
  if (suite === undefined) throw new ProtocolError(A.no_common_suite, 'no common suite');
  const kemName = SUITES[suite].kem;
  if (SUITES[m.suites[0]]?.kem !== kemName) throw new ProtocolError(A.no_common_suite, 'the key share is not for the chosen suite\'s KEM');
  const { h } = SUITES[suite];
  // 5. context
  if (!m.context.equals(enc(cfg.context))) throw new ProtocolError(A.context_mismatch, 'the application context differs');
  // 6. policies
  if (policyClash(cfg.qkdPolicy, m.qkdPolicy)) throw new ProtocolError(A.qkd_policy, 'the QKD policies clash (required vs off)', { exitCode: 4 });
  // 7. auth kind
  let names = null;
  if (auth.mode === 'psk') {
    if (m.authKind !== AUTH_PSK) throw new ProtocolError(A.no_common_suite, 'the initiator does not use PSK authentication');
    names = { nameI: enc(auth.peerName), nameR: enc(auth.name) };
    let choice = -1;
    for (const k of auth.psks) {
      const b = blindId(k, names.nameI, names.nameR, m.prefix);
      const idx = m.pskIds.findIndex((x) => timingSafeEqual(x, b));
      if (idx >= 0) { choice = idx; auth.usedPsk = k; auth.usedIndex = auth.psks.indexOf(k); break; }
    }
    if (choice < 0) throw new ProtocolError(A.unknown_peer, 'no PSK identifier matches a key held for this peer', { exitCode: 3 });
    auth.choice = choice;
  } else {
    if (!sigByKind(m.authKind)) throw new ProtocolError(A.no_common_suite, 'the initiator does not use ML-DSA authentication');
    if (m.pskIds.length !== 0) throw new ProtocolError(A.bad_message, 'PSK identifiers in ML-DSA mode');
    auth.choice = 0xff;
  }
  // 8. key share
  const K = await kem(kemName);
  if (m.kemKey.length !== K.ek) throw new ProtocolError(A.bad_message, 'ML-KEM encapsulation key of the wrong length');
  if (m.x25519.length !== 32) throw new ProtocolError(A.bad_message, 'X25519 key of the wrong length');
  const xSk = random(32);
  let k1;
  try { k1 = x25519(xSk, m.x25519); } catch (e) { throw new ProtocolError(A.bad_message, e.message); }
  const { ct, ss: k2 } = K.encaps(m.kemKey);
  const rhPub = encodeRespHelloPub({ nonce: random(32), suite, qkdPolicy: cfg.qkdPolicy, x25519: x25519Public(xSk), kemCiphertext: ct, pskChoice: auth.choice });
  const hs = handshakeSecret(suite, k1, k2, ih, rhPub);
  const identityR = auth.mode === 'psk' ? Buffer.alloc(0) : auth.pk;
  const tagR = await makeTag(auth, 'responder', transcript(h, ih, rhPub, vec16(identityR)), names);
  const rhPlain = cat(vec16(identityR), vec16(tagR));
  const rh = frame(T.RespHello, cat(rhPub, vec16(aeadSeal(expandKey32(h, hs, L.rhKey), transcript(h, ih, rhPub), rhPlain))));
  io.send(rh);
  const ifMsg = await io.recv();
  if (ifMsg.type !== T.InitFinish) throw new ProtocolError(A.bad_message, `expected InitFinish, got message type ${ifMsg.type}`);
  const ifr = ifMsg.raw;
  const ir = new Reader(ifMsg.body, 'InitFinish'); const ifSealed = ir.vec16(); ir.end();
  let ifPlain;
  try { ifPlain = aeadOpen(expandKey32(h, hs, L.ifKey), transcript(h, ih, rh), ifSealed); } catch {
    throw new ProtocolError(A.auth_failed, 'InitFinish does not open (handshake key confirmation failed)', { exitCode: 3 });
  }
  const pr = new Reader(ifPlain, 'InitFinish payload');
  const identityI = pr.vec16();
  const block = readQkdBlock(pr);
  const ifCore = ifPlain.subarray(0, pr.off);
  const tagI = pr.vec16(); const confirmI = pr.vec8(); pr.end();
  let idI, idR;
  if (auth.mode === 'psk') {
    if (identityI.length !== 0) throw new ProtocolError(A.bad_message, 'an initiator identity in PSK mode');
    idI = names.nameI; idR = names.nameR;
  } else {
    if (identityI.equals(auth.pk)) throw new ProtocolError(A.unknown_peer, 'the initiator presented this side\'s own key', { exitCode: 3 });
    if (!auth.peers.some((p) => p.equals(identityI))) throw new ProtocolError(A.unknown_peer, 'the initiator\'s key is not pinned', { exitCode: 3 });
    const alg = Object.keys(SIGS).find((k) => SIGS[k].pk === identityI.length);
    if (SIGS[alg].kind !== m.authKind) throw new ProtocolError(A.auth_failed, 'the initiator\'s key is not of the level its InitHello said', { exitCode: 3 });
    auth.peerAlg = alg;
    idI = identityI; idR = auth.pk;
  }
  if (!(await checkTag(auth, 'initiator', transcript(h, ih, rh, ifCore), tagI, names, identityI))) {
    throw new ProtocolError(A.auth_failed, 'the initiator\'s tag does not verify', { exitCode: 3 });
  }
  log('initiator authenticated');
  log(`QKD block: status ${block.status} reason ${block.reason} master '${block.masterSaeId}' slave '${block.slaveSaeId}' key_bits ${block.keyBits} key_IDs ${block.keyIds.length}`);
  const agreed = cfg.qkdPolicy !== POLICY.off && m.qkdPolicy !== POLICY.off;
  const either = cfg.qkdPolicy === POLICY.required || m.qkdPolicy === POLICY.required;
  checkQkdBlockAgreement(block, agreed, either);
  const ma = cat(ih, ifCore, vec16(tagI));
  const mb = cat(rhPub, rhPlain);
  const qkd = cfg.qkd ?? {};
  let q = Buffer.alloc(0); let fallbackReason = null;
  if (block.status === 1) {
    if (block.masterSaeId !== qkd.peerSaeId || block.slaveSaeId !== qkd.saeId || block.keyBits !== (qkd.keyBits ?? 256)) {
      throw new ProtocolError(A.auth_failed, 'the QKD block names other SAE IDs or another key size than configured for this peer', { exitCode: 3 });
    }
    if (cfg.journal && cfg.journal.has('slave', block.keyIds)) throw new ProtocolError(A.qkd_replay, 'a QKD key_ID was already used', { exitCode: 4 });
    try {
      if (!qkd.source) throw Object.assign(new Error('no QKD source'), { reason: 3 });
      if (cfg.journal) cfg.journal.record('slave', block.keyIds);
      const keys = await qkd.source.decKeys(block.masterSaeId, block.keyIds, block.keyBits);
      q = cat(...keys);
    } catch (e) {
      if (e instanceof ProtocolError) throw e;
      if (e.replay) throw new ProtocolError(A.qkd_replay, `the KME says the key_ID was used: ${e.message}`, { exitCode: 4 });
      if (either) throw new ProtocolError(A.qkd_policy, `could not get the QKD key (${e.message}) and the QKD policy is required`, { exitCode: 4 });
      log(`no QKD key: ${e.message}; falling back`);
      fallbackReason = e.reason ?? 1;
    }
  }
  if (fallbackReason === null) {
    const session = sessionSecret(suite, { q, k1, k2, idI, idR, blockFinal: block.bytes, ma, mb });
    const want = hmac(h, expand(h, session, L.initFinished), transcript(h, ih, rh, cat(ifCore, vec16(tagI))));
    if (!timingSafeEqual(want, confirmI)) throw new ProtocolError(A.auth_failed, 'the initiator\'s key confirmation failed', { exitCode: 3 });
    const rfCore = Buffer.from([0, 0]);
    const confirmR = hmac(h, expand(h, session, L.respFinished), transcript(h, ih, rh, ifr, cat(rfCore, vec16(Buffer.alloc(0)))));
    const rf = frame(T.RespFinish, vec16(aeadSeal(expandKey32(h, hs, L.rfKey), transcript(h, ih, rh, ifr),
      cat(rfCore, vec16(Buffer.alloc(0)), u8(confirmR.length), confirmR))));
    io.send(rf);
    await io.lastMessageGrace();
    const out = outputs(suite, session, idI, idR);
    return { ...result({ role: 'responder', suite, auth, peerId: idI, block, qkdUsed: block.status === 1, frames: [ih, rh, ifr, rf], exchangeKey: out.exchangeKey }), out, authState: auth, qkdFed: q.length > 0 };
  }
  // Fallback (§6.4): tag_F, session without Q over the final block.
  const rfCore = Buffer.from([2, fallbackReason]);
  const tagF = await makeTag(auth, 'fallback', transcript(h, ih, rh, ifr, rfCore), names);
  const finalBlock = encodeQkdBlock({ ...block, status: 2, reason: fallbackReason });
  const session = sessionSecret(suite, { q: Buffer.alloc(0), k1, k2, idI, idR, blockFinal: finalBlock, ma, mb: cat(mb, rfCore, vec16(tagF)) });
  // confirm_I was made under the session with Q; it cannot be checked here (§6.4 does not say it is).
  const confirmR = hmac(h, expand(h, session, L.respFinished), transcript(h, ih, rh, ifr, cat(rfCore, vec16(tagF))));
  const rf = frame(T.RespFinish, vec16(aeadSeal(expandKey32(h, hs, L.rfKey), transcript(h, ih, rh, ifr),
    cat(rfCore, vec16(tagF), u8(confirmR.length), confirmR))));
  io.send(rf);
  const icMsg = await io.recv();
  if (icMsg.type !== T.InitConfirm) throw new ProtocolError(A.bad_message, `expected InitConfirm, got message type ${icMsg.type}`);
  const icr = new Reader(icMsg.body, 'InitConfirm'); const icSealed = icr.vec16(); icr.end();
  let icPlain;
  try { icPlain = aeadOpen(expandKey32(h, hs, L.icKey), transcript(h, ih, rh, ifr, rf), icSealed); } catch {
    throw new ProtocolError(A.auth_failed, 'InitConfirm does not open', { exitCode: 3 });
  }
  const [confirmF] = parsePlain(icPlain, 'InitConfirm payload', [8]);
  const want = hmac(h, expand(h, session, L.initConfirm), transcript(h, ih, rh, ifr, rf));
  if (!timingSafeEqual(want, confirmF)) throw new ProtocolError(A.auth_failed, 'the initiator\'s fallback confirmation failed', { exitCode: 3 });
  const out = outputs(suite, session, idI, idR);
  return { ...result({ role: 'responder', suite, auth, peerId: idI, block: { ...block, status: 2, reason: fallbackReason }, qkdUsed: false, frames: [ih, rh, ifr, rf, icMsg.raw], exchangeKey: out.exchangeKey, fallbackReason }), out, authState: auth, qkdFed: false };
}

export { PeerAlert, ProtocolError, KEMS };
