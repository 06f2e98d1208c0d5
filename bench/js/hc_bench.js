#!/usr/bin/env node
// JS side of bench/data_bench.py: hypercore 11.37.1 (the pinned js/node_modules) timed in-process.
// Every command prints one JSON line on stdout ({"event": ...}); errors go to stderr, exit 1.
//
//   append --dir D --seed HEX32 --count N --size S --batch B   time N appends of S-byte blocks,
//          B per append() call (B = 1: each append awaited before the next)
//   make   --dir D --seed HEX32 --count N --size S             create a core (untimed setup)
//   serve  --dir D --listen HOST:PORT                          serve it over TCP until SIGTERM
//   read   --dir D --key HEX --connect HOST:PORT               time connect -> all blocks
//          downloaded and verified (download({start: 0, end: length}).done())
//   getall --dir D --key HEX [--audit]                         time opening a replica from disk
//          and get(i) of every block; then (untimed) a SHA-256 over all blocks; --audit also times
//          core.core.audit({dryRun: true}) (re-hash every stored block and tree node)
//
// Results carry the core's tree hash (hash of its signed roots), so the caller can check that
// every replica ended up with exactly the writer's tree.
//
// Block i is u64le(i) followed by S - 8 bytes of a fixed pseudo-random pattern (content does not
// matter for the timing; only that blocks differ). Run with cwd js/ or NODE_PATH=js/node_modules.
'use strict'

const path = require('path')
const net = require('net')
const nodeCrypto = require('crypto')

const JS = path.resolve(__dirname, '..', '..', 'js')
const req = (name) => require(require.resolve(name, { paths: [JS] }))
const Hypercore = req('hypercore')
const NoiseSecretStream = req('@hyperswarm/secret-stream')
const hcrypto = req('hypercore-crypto')

function parseArgs(argv) {
  const opts = { _: [] }
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]
    if (!a.startsWith('--')) {
      opts._.push(a)
      continue
    }
    const eq = a.indexOf('=')
    if (eq !== -1) opts[a.slice(2, eq)] = a.slice(eq + 1)
    else if (i + 1 < argv.length && !argv[i + 1].startsWith('--')) opts[a.slice(2)] = argv[++i]
    else opts[a.slice(2)] = true
  }
  return opts
}

function emit(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n')
}

function hostPort(s) {
  const i = s.lastIndexOf(':')
  return { host: s.slice(0, i).replace(/^\[|\]$/g, ''), port: Number(s.slice(i + 1)) }
}

function now() {
  return Number(process.hrtime.bigint()) / 1e6
}

function makeBlocks(start, count, size) {
  const pattern = Buffer.alloc(Math.max(size, 8))
  let seedBuf = nodeCrypto.createHash('sha256').update('cloudpal-data-bench').digest()
  for (let off = 0; off < pattern.length; off += 32) {
    seedBuf.copy(pattern, off)
    seedBuf = nodeCrypto.createHash('sha256').update(seedBuf).digest()
  }
  const blocks = []
  for (let i = start; i < start + count; i++) {
    const b = Buffer.from(pattern.subarray(0, size))
    if (size >= 8) b.writeBigUInt64LE(BigInt(i), 0)
    blocks.push(b)
  }
  return blocks
}

function treeHash(core) {
  return Buffer.from(core.state.hash()).toString('hex')
}

function keyPairOpt(opts) {
  return opts.seed ? { keyPair: hcrypto.keyPair(Buffer.from(opts.seed, 'hex')) } : {}
}

async function cmdAppend(opts) {
  const count = Number(opts.count)
  const size = Number(opts.size)
  const batch = Number(opts.batch || 1)
  const blocks = makeBlocks(0, count, size)
  const core = new Hypercore(opts.dir, keyPairOpt(opts))
  await core.ready()
  const t0 = now()
  if (batch === 1) {
    for (let i = 0; i < count; i++) await core.append(blocks[i])
  } else {
    for (let i = 0; i < count; i += batch) await core.append(blocks.slice(i, i + batch))
  }
  const ms = now() - t0
  const out = { event: 'append', ms, length: core.length, key: core.key.toString('hex'), treeHash: treeHash(core) }
  await core.close()
  emit(out)
}

async function cmdMake(opts) {
  const count = Number(opts.count)
  const size = Number(opts.size)
  const core = new Hypercore(opts.dir, keyPairOpt(opts))
  await core.ready()
  const per = Math.max(1, Math.min(1000, Math.floor((16 * 1048576) / Math.max(size, 1))))
  for (let i = 0; i < count; i += per) await core.append(makeBlocks(i, Math.min(per, count - i), size))
  emit({
    event: 'made', key: core.key.toString('hex'), length: core.length, byteLength: core.byteLength, treeHash: treeHash(core)
  })
  await core.close()
}

function attach(core, socket, isInitiator, conns) {
  socket.setNoDelay(true)
  const ns = new NoiseSecretStream(isInitiator, socket)
  ns.on('error', () => {})
  conns.add(ns)
  ns.on('close', () => conns.delete(ns))
  core.replicate(ns)
  return ns
}

async function cmdServe(opts) {
  const core = new Hypercore(opts.dir)
  await core.ready()
  const conns = new Set()
  const server = net.createServer((socket) => attach(core, socket, false, conns))
  const hp = hostPort(opts.listen)
  await new Promise((resolve, reject) => {
    server.once('error', reject)
    server.listen(hp.port, hp.host, resolve)
  })
  const stop = async () => {
    server.close()
    for (const ns of conns) ns.destroy()
    await core.close()
    process.exit(0)
  }
  process.on('SIGTERM', stop)
  process.on('SIGINT', stop)
  emit({
    event: 'listening', port: server.address().port, length: core.length, key: core.key.toString('hex'), treeHash: treeHash(core)
  })
}

async function cmdRead(opts) {
  const core = new Hypercore(opts.dir, Buffer.from(opts.key, 'hex'))
  await core.ready()
  let failed = null
  core.on('verification-error', (err) => {
    failed = err
  })
  const hp = hostPort(opts.connect)
  const conns = new Set()
  const t0 = now()
  const socket = await new Promise((resolve, reject) => {
    const s = net.connect(hp.port, hp.host)
    s.once('connect', () => resolve(s))
    s.once('error', reject)
  })
  const peerUp = new Promise((resolve) => core.once('peer-add', resolve))
  const doneFinding = core.findingPeers()
  attach(core, socket, true, conns)
  await peerUp
  doneFinding()
  await core.update({ wait: true })
  const length = core.length
  await core.download({ start: 0, end: length }).done()
  const ms = now() - t0
  if (failed) throw failed
  if (core.contiguousLength !== length) throw new Error(`only ${core.contiguousLength} of ${length} blocks`)
  const out = { event: 'read', ms, length, byteLength: core.byteLength, treeHash: treeHash(core) }
  for (const ns of conns) ns.destroy()
  await core.close()
  emit(out)
}

async function cmdGetall(opts) {
  const tOpen = now()
  const core = new Hypercore(opts.dir, Buffer.from(opts.key, 'hex'))
  await core.ready()
  const openMs = now() - tOpen
  const length = core.length
  let bytes = 0
  const t0 = now()
  for (let i = 0; i < length; i++) {
    const block = await core.get(i, { wait: false })
    if (block === null) throw new Error(`block ${i} is missing`)
    bytes += block.byteLength
  }
  const ms = now() - t0
  const digest = nodeCrypto.createHash('sha256')
  for (let i = 0; i < length; i++) digest.update(await core.get(i, { wait: false }))
  const out = { event: 'getall', openMs, ms, length, bytes, digest: digest.digest('hex'), treeHash: treeHash(core) }
  if (opts.audit) {
    const t1 = now()
    const stats = await core.core.audit({ dryRun: true })
    out.auditMs = now() - t1
    out.audit = stats
  }
  await core.close()
  emit(out)
}

const COMMANDS = { append: cmdAppend, make: cmdMake, serve: cmdServe, read: cmdRead, getall: cmdGetall }

async function main() {
  const opts = parseArgs(process.argv.slice(2))
  const cmd = COMMANDS[opts._[0]]
  if (!cmd) throw new Error(`usage: hc_bench.js ${Object.keys(COMMANDS).join('|')} [options]`)
  await cmd(opts)
}

main().catch((err) => {
  process.stderr.write(`hc_bench: ${err && err.stack ? err.stack : err}\n`)
  process.exit(1)
})
