// A js-libp2p peer that joins a p2pay node's offer topic (gossipsub) and DHT (Kademlia),
// used by tests/integration/test_interop_js.py to show that p2pay's discovery speaks the
// standard libp2p protocols.
//
// Usage:
//   node peer.mjs --connect MULTIADDR --topic TOPIC --key HEX34
//                 [--listen /ip4/127.0.0.1/tcp/PORT] [--seed HEX32] [--provide] [--publish HEX] [--from PEERID]
//                 [--provider PEERID] [--timeout-ms N] [--linger-ms N]
//
// Its identity is a fresh Ed25519 key, or the one derived from the 32-byte seed HEX32.
// It listens on 127.0.0.1 only (on PORT with --listen, else a free port), dials MULTIADDR (which must end in /p2p/<PeerID>),
// subscribes to TOPIC and looks up the providers of CIDv1(raw, multihash HEX34) until it
// has seen a message on TOPIC (from PEERID with --from) and a provider (PEERID with
// --provider), and done what --provide / --publish asked, or until TIMEOUT elapses.
// Every message and every provider is printed, expected or not. With --provide it announces
// itself as a provider of that key; with --publish it publishes HEX on TOPIC (once a peer
// is subscribed to it, then again every second: at most 5 times). Each event is one JSON
// line on stdout:
//   {"event":"listening","peer":ID,"addrs":[...]}
//   {"event":"connected","peer":ID}
//   {"event":"subscribed","peer":ID,"topic":T}      a remote peer joined TOPIC
//   {"event":"message","from":ID,"topic":T,"data":HEX}
//   {"event":"provider","peer":ID,"addrs":[...]}    (each provider once)
//   {"event":"provided"}  {"event":"published","count":N}
//   {"event":"error","where":W,"message":M}          (non-fatal: retried)
//   {"event":"done","ok":BOOL,"message":BOOL,"provider":BOOL,"provided":BOOL,"published":BOOL}
// Exit status: 0 when everything expected was seen, 1 on timeout or failure, 2 on bad
// arguments.

// js-libp2p 3.x calls Promise.withResolvers (Node >= 22); Node 20 lacks it.
if (typeof Promise.withResolvers !== 'function') {
  Promise.withResolvers = function withResolvers () {
    let resolve, reject
    const promise = new this((res, rej) => { resolve = res; reject = rej })
    return { promise, resolve, reject }
  }
}

const { parseArgs } = await import('node:util')
const { createLibp2p } = await import('libp2p')
const { tcp } = await import('@libp2p/tcp')
const { noise } = await import('@chainsafe/libp2p-noise')
const { yamux } = await import('@libp2p/yamux')
const { generateKeyPair, generateKeyPairFromSeed } = await import('@libp2p/crypto/keys')
const { identify } = await import('@libp2p/identify')
const { ping } = await import('@libp2p/ping')
const { gossipsub } = await import('@libp2p/gossipsub')
const { kadDHT, passthroughMapper } = await import('@libp2p/kad-dht')
const { multiaddr } = await import('@multiformats/multiaddr')
const { CID } = await import('multiformats/cid')
const Digest = await import('multiformats/hashes/digest')

const RAW_CODEC = 0x55
const PUBLISH_MAX = 5

// the reader went away (the test ended): nothing left to report to
process.stdout.on('error', () => process.exit(1))

function emit (event, fields = {}) {
  process.stdout.write(JSON.stringify({ event, ...fields }) + '\n')
}

function hex (bytes) {
  return Buffer.from(bytes).toString('hex')
}

function fromHex (text, what) {
  if (!/^([0-9a-fA-F]{2})*$/.test(text)) {
    throw new Error(`${what} is not hex: ${text.slice(0, 80)}`)
  }
  return new Uint8Array(Buffer.from(text, 'hex'))
}

function usage (message) {
  process.stderr.write(`peer.mjs: ${message}\n`)
  process.exit(2)
}

let args
try {
  ({ values: args } = parseArgs({
    options: {
      connect: { type: 'string' },
      topic: { type: 'string' },
      key: { type: 'string' },
      listen: { type: 'string', default: '/ip4/127.0.0.1/tcp/0' },
      seed: { type: 'string' },
      provide: { type: 'boolean', default: false },
      publish: { type: 'string' },
      from: { type: 'string' },
      provider: { type: 'string' },
      'timeout-ms': { type: 'string', default: '30000' },
      'linger-ms': { type: 'string', default: '1000' }
    },
    strict: true
  }))
} catch (err) {
  usage(err.message)
}
if (args.connect == null || args.topic == null || args.key == null) {
  usage('--connect, --topic and --key are required')
}
const timeoutMs = Number(args['timeout-ms'])
const lingerMs = Number(args['linger-ms'])
if (!Number.isInteger(timeoutMs) || timeoutMs <= 0 || timeoutMs > 600000) {
  usage('--timeout-ms is an integer in 1..600000')
}
if (!Number.isInteger(lingerMs) || lingerMs < 0 || lingerMs > 60000) {
  usage('--linger-ms is an integer in 0..60000')
}
let target, key, cid, payload, seed
try {
  if (!/^\/ip4\/127\.0\.0\.1\/tcp\/[0-9]{1,5}$/.test(args.listen)) {
    throw new Error('--listen is /ip4/127.0.0.1/tcp/PORT (this peer talks to 127.0.0.1 only)')
  }
  seed = args.seed == null ? null : fromHex(args.seed, '--seed')
  if (seed != null && seed.length !== 32) throw new Error('--seed is 32 bytes')
  target = multiaddr(args.connect)
  const last = target.getComponents().at(-1)
  if (last?.name !== 'p2p') throw new Error('the multiaddr does not end in /p2p/<PeerID>')
  key = fromHex(args.key, '--key')
  // the key is a multihash: decode checks its header and length (34 bytes for sha2-256)
  cid = CID.createV1(RAW_CODEC, Digest.decode(key))
  payload = args.publish == null ? null : fromHex(args.publish, '--publish')
} catch (err) {
  usage(err.message)
}
const expectFrom = args.from ?? null
const expectProvider = args.provider ?? null

const node = await createLibp2p({
  privateKey: seed == null ? await generateKeyPair('Ed25519') : await generateKeyPairFromSeed('Ed25519', seed),
  addresses: { listen: [args.listen] },
  transports: [tcp()],
  connectionEncrypters: [noise()],
  streamMuxers: [yamux()],
  services: {
    identify: identify(),
    ping: ping(),
    pubsub: gossipsub({
      // the default policy, spelled out: messages carry from, seqno, key and signature,
      // and their id is from + seqno (what py-libp2p's pubsub does by default)
      globalSignaturePolicy: 'StrictSign',
      allowPublishToZeroTopicPeers: false,
      emitSelf: false
    }),
    dht: kadDHT({
      protocol: '/ipfs/kad/1.0.0',
      clientMode: false,
      // keep 127.0.0.1 addresses (the default mapper drops private ones)
      peerInfoMapper: passthroughMapper
    })
  }
})

const state = { message: false, provider: false, provided: !args.provide, published: payload == null }
const seenProviders = new Set()
let finished = false
let finish
const finishedPromise = new Promise((resolve) => { finish = resolve })

function goalsMet () {
  return state.message && state.provider && state.provided && state.published
}

function check () {
  if (!finished && goalsMet()) {
    finished = true
    finish(true)
  }
}

const sleep = (ms, signal) => new Promise((resolve) => {
  const t = setTimeout(resolve, ms)
  signal?.addEventListener('abort', () => { clearTimeout(t); resolve() }, { once: true })
})

const stop = new AbortController()
const timer = setTimeout(() => { if (!finished) { finished = true; finish(false) } }, timeoutMs)

async function lookForProviders () {
  while (!stop.signal.aborted && !state.provider) {
    try {
      for await (const prov of node.contentRouting.findProviders(cid, {
        signal: AbortSignal.any([stop.signal, AbortSignal.timeout(5000)])
      })) {
        const id = prov.id.toString()
        if (id === node.peerId.toString() || seenProviders.has(id)) continue
        seenProviders.add(id)
        emit('provider', { peer: id, addrs: prov.multiaddrs.map((m) => m.toString()) })
        if (expectProvider == null || id === expectProvider) {
          state.provider = true
          check()
        }
      }
    } catch (err) {
      if (!stop.signal.aborted) emit('error', { where: 'findProviders', message: String(err?.message ?? err) })
    }
    await sleep(1000, stop.signal)
  }
}

async function provideKey () {
  while (!stop.signal.aborted && !state.provided) {
    try {
      await node.contentRouting.provide(cid, {
        signal: AbortSignal.any([stop.signal, AbortSignal.timeout(10000)])
      })
      state.provided = true
      emit('provided')
      check()
    } catch (err) {
      if (!stop.signal.aborted) emit('error', { where: 'provide', message: String(err?.message ?? err) })
      await sleep(1000, stop.signal)
    }
  }
}

async function publishPayload () {
  let count = 0
  while (!stop.signal.aborted && count < PUBLISH_MAX) {
    if (node.services.pubsub.getSubscribers(args.topic).length > 0) {
      try {
        await node.services.pubsub.publish(args.topic, payload)
        count += 1
        emit('published', { count })
        state.published = true
        check()
      } catch (err) {
        emit('error', { where: 'publish', message: String(err?.message ?? err) })
      }
    }
    await sleep(1000, stop.signal)
  }
}

let ok = false
try {
  emit('listening', { peer: node.peerId.toString(), addrs: node.getMultiaddrs().map((m) => m.toString()) })
  // on a loopback-only test network no address is public: serve the DHT anyway
  await node.services.dht.setMode('server')

  node.services.pubsub.addEventListener('message', (evt) => {
    const msg = evt.detail
    if (msg.topic !== args.topic) return
    const from = msg.type === 'signed' ? msg.from.toString() : null
    emit('message', { from, topic: msg.topic, data: hex(msg.data) })
    if (expectFrom == null || from === expectFrom) {
      state.message = true
      check()
    }
  })
  node.services.pubsub.addEventListener('subscription-change', (evt) => {
    for (const sub of evt.detail.subscriptions) {
      if (sub.topic === args.topic && sub.subscribe) {
        emit('subscribed', { peer: evt.detail.peerId.toString(), topic: sub.topic })
      }
    }
  })
  node.services.pubsub.subscribe(args.topic)

  const conn = await node.dial(target, { signal: AbortSignal.timeout(Math.min(timeoutMs, 10000)) })
  emit('connected', { peer: conn.remotePeer.toString() })

  const tasks = [lookForProviders()]
  if (args.provide) tasks.push(provideKey())
  if (payload != null) tasks.push(publishPayload())

  ok = await finishedPromise
  if (ok && lingerMs > 0) await sleep(lingerMs) // let the last messages leave
  stop.abort()
  await Promise.allSettled(tasks)
} catch (err) {
  emit('error', { where: 'main', message: String(err?.message ?? err) })
  ok = false
} finally {
  clearTimeout(timer)
  stop.abort()
  emit('done', { ok, message: state.message, provider: state.provider, provided: state.provided, published: state.published })
  // stop() closes connections; do not let a stuck close keep the process alive
  await Promise.race([node.stop(), sleep(3000)])
  process.exit(ok ? 0 : 1)
}
