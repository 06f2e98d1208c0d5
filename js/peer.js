#!/usr/bin/env node
// CloudPal's JavaScript reference Hypercore peer (hypercore 11.37.1 over TCP + Noise secret-stream).
// Used by the interop tests and benchmarks as the "real JS stack" counterpart of the Python peer.
// stdout: one JSON object per line (machine-readable events); stderr: logs and --trace output.
// See README.md next to this file for the full CLI and event reference.
'use strict'

const fs = require('fs')
const net = require('net')
const os = require('os')
const path = require('path')
const nodeCrypto = require('crypto')

const Hypercore = require('hypercore')
const NoiseSecretStream = require('@hyperswarm/secret-stream')
const hcrypto = require('hypercore-crypto')
// Only the pinned packages are dependencies; the wire codecs come from hypercore itself and
// compact-encoding is resolved through hypercore's own dependency tree.
const { wire } = require('hypercore/lib/messages.js')
const c = require(
  require.resolve('compact-encoding', { paths: [path.dirname(require.resolve('hypercore'))] })
)

const EXIT = { OK: 0, ERROR: 1, TIMEOUT: 2, VERIFICATION: 3, USAGE: 64 }

const USAGE = `usage: node peer.js <write|read|info> [options]

write  --dir D [--seed HEX32] [--compat] [--encryption-key HEX32]
       [--blocks N [--block-size S] [--empty-every K] [--large-every K --large-size S]]
       [--from-file F] [--stdin] [--hex] [--truncate N] [--then-blocks M]
       [--listen HOST:PORT | --connect HOST:PORT] [--once] [--no-digest] [--corrupt-block I]
read   --key HEX [--dir D] [--encryption-key HEX32] [--compat]
       (--connect HOST:PORT | --listen HOST:PORT) [--start A] [--end B] [--live]
       [--expect-length N] [--summary] [--raw] [--timeout S]
info   --dir D [--encryption-key HEX32] [--compat] [--dump] [--raw] [--no-digest]
common [--trace] [--trace-max BYTES] [--noise-seed HEX32] [--timeout S] [--quiet]`

// ---------------------------------------------------------------- output helpers

let QUIET = false
let ROLE = 'peer'

// process.exit() can drop stdout still queued for a pipe/socket (a reader printing MiB-sized blocks):
// exit only once everything written so far has been flushed. Idempotent.
let exiting = false
function exit(code) {
  if (exiting) return
  exiting = true
  process.exitCode = code
  process.stdout.write('', () => process.exit(code))
  setTimeout(() => process.exit(code), 10000).unref()
}

function emit(obj) {
  if (exiting) return // nothing may follow the final event (error/done/exit)
  process.stdout.write(JSON.stringify(obj) + '\n')
}

function log(...args) {
  if (!QUIET) process.stderr.write(`[peer ${ROLE}] ${args.join(' ')}\n`)
}

function hex(buf) {
  return buf ? Buffer.from(buf.buffer, buf.byteOffset, buf.byteLength).toString('hex') : null
}

class CliError extends Error {
  constructor(code, message, exitCode) {
    super(message)
    this.code = code
    this.exitCode = exitCode
  }
}

function usageError(message) {
  return new CliError('USAGE', message, EXIT.USAGE)
}

// Prints the error as a JSON event and on stderr, then exits: the single way this process fails.
function fail(err) {
  const code = err.code || 'ERROR'
  if (/k must be a typed array/.test(err.message)) {
    // hypercore 11.37.1 DefaultEncryption#_reload reads keys.blockKey/blindingKey, which deriveKeys()
    // does not return, so a reader that learns only from the peer that its core is compat loses
    // its block key. Name the work-around instead of sodium's assertion.
    err.message += ' (encrypted compat core? read it with --compat: hypercore 11.37.1 cannot switch keys)'
  }
  const exitCode =
    err.exitCode ||
    (/INVALID_SIGNATURE|INVALID_CHECKSUM|INVALID_PROOF|INVALID_OPERATION/.test(code)
      ? EXIT.VERIFICATION
      : EXIT.ERROR)
  emit({ event: 'error', code, message: err.message })
  process.stderr.write(`[peer ${ROLE}] error ${code}: ${err.message}\n`)
  if (code === 'USAGE') process.stderr.write(USAGE + '\n')
  exit(exitCode)
}

// ---------------------------------------------------------------- argument parsing

const FLAGS = {
  // name: 'string' | 'int' | 'bool'
  dir: 'string',
  seed: 'string',
  compat: 'bool',
  'encryption-key': 'string',
  blocks: 'int',
  'block-size': 'int',
  'empty-every': 'int',
  'large-every': 'int',
  'large-size': 'int',
  'from-file': 'string',
  stdin: 'bool',
  hex: 'bool',
  truncate: 'int',
  'then-blocks': 'int',
  listen: 'string',
  connect: 'string',
  once: 'bool',
  'no-digest': 'bool',
  key: 'string',
  start: 'int',
  end: 'int',
  live: 'bool',
  'expect-length': 'int',
  summary: 'bool',
  raw: 'bool',
  dump: 'bool',
  timeout: 'float',
  trace: 'bool',
  'trace-max': 'int',
  'noise-seed': 'string',
  'corrupt-block': 'int',
  quiet: 'bool',
  help: 'bool'
}

function parseArgs(argv) {
  const opts = { _: [] }
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]
    if (!a.startsWith('--')) {
      opts._.push(a)
      continue
    }
    let name = a.slice(2)
    let value = null
    const eq = name.indexOf('=')
    if (eq !== -1) {
      value = name.slice(eq + 1)
      name = name.slice(0, eq)
    }
    const type = FLAGS[name]
    if (!type) throw usageError(`unknown flag --${name}`)
    if (type === 'bool') {
      if (value !== null) throw usageError(`--${name} takes no value`)
      opts[name] = true
      continue
    }
    if (value === null) {
      if (i + 1 >= argv.length || argv[i + 1].startsWith('--')) throw usageError(`--${name} needs a value`)
      value = argv[++i]
    }
    if (type === 'int') {
      if (!/^\d+$/.test(value)) throw usageError(`--${name} must be a non-negative integer`)
      opts[name] = Number(value)
      if (!Number.isSafeInteger(opts[name])) throw usageError(`--${name} is too large`)
    } else if (type === 'float') {
      const v = Number(value)
      if (!Number.isFinite(v) || v < 0) throw usageError(`--${name} must be a non-negative number`)
      opts[name] = v
    } else {
      opts[name] = value
    }
  }
  return opts
}

function hexArg(opts, name, bytes) {
  const v = opts[name]
  if (v === undefined) return null
  if (!new RegExp(`^[0-9a-fA-F]{${2 * bytes}}$`).test(v)) {
    throw usageError(`--${name} must be ${bytes} bytes of hex`)
  }
  return Buffer.from(v, 'hex')
}

function parseHostPort(s, flag) {
  const m = /^(?:\[([^\]]+)\]|([^:]+)):(\d+)$/.exec(s)
  if (!m) throw usageError(`--${flag} must be HOST:PORT`)
  return { host: m[1] || m[2], port: Number(m[3]) }
}

function onlyFlags(opts, allowed, cmd) {
  for (const k of Object.keys(opts)) {
    if (k === '_') continue
    if (!allowed.includes(k)) throw usageError(`--${k} is not an option of "${cmd}"`)
  }
}

// ---------------------------------------------------------------- deterministic block content

// Generated blocks are reproducible from (index, size, salt) so other implementations can rebuild
// them: SHA-256("cloudpal-peer-block" || u64le(salt) || u64le(index)) repeated and cut to `size`.
// `salt` is the core's fork at append time, so blocks re-appended after a truncate differ.
function blockContent(index, size, salt) {
  if (size === 0) return Buffer.alloc(0)
  const seed = Buffer.alloc(16)
  seed.writeBigUInt64LE(BigInt(salt), 0)
  seed.writeBigUInt64LE(BigInt(index), 8)
  const h = nodeCrypto.createHash('sha256').update('cloudpal-peer-block').update(seed).digest()
  const out = Buffer.allocUnsafe(size)
  for (let off = 0; off < size; off += 32) h.copy(out, off, 0, Math.min(32, size - off))
  return out
}

function blockSize(index, opts) {
  const k = index + 1
  if (opts['empty-every'] && k % opts['empty-every'] === 0) return 0
  if (opts['large-every'] && k % opts['large-every'] === 0) return opts['large-size'] ?? 1048576
  return opts['block-size'] ?? 1024
}

// Running digest over a sequence of blocks: SHA-256 of (u64le(len) || block) for each block in order.
class BlocksDigest {
  constructor() {
    this.h = nodeCrypto.createHash('sha256')
    this.count = 0
    this.bytes = 0
  }

  add(block) {
    const len = Buffer.alloc(8)
    len.writeBigUInt64LE(BigInt(block.byteLength))
    this.h.update(len)
    this.h.update(block)
    this.count++
    this.bytes += block.byteLength
  }

  hex() {
    return this.h.digest('hex')
  }
}

function splitLines(buf, asHex) {
  const lines = []
  let start = 0
  for (;;) {
    const nl = buf.indexOf(10, start)
    if (nl === -1) break
    lines.push(buf.subarray(start, nl))
    start = nl + 1
  }
  if (start < buf.byteLength) lines.push(buf.subarray(start))
  return asHex ? lines.map(decodeHexLine) : lines
}

function decodeHexLine(line) {
  const s = line.toString('latin1').trim()
  if (!/^([0-9a-fA-F]{2})*$/.test(s)) throw usageError(`not a hex line: ${s.slice(0, 40)}`)
  return Buffer.from(s, 'hex')
}

// ---------------------------------------------------------------- core state reporting

function treeByteLength(core) {
  return core.byteLength + core.length * core.padding
}

function coreState(core) {
  return {
    key: hex(core.key),
    discoveryKey: hex(core.discoveryKey),
    length: core.length,
    // Hash of the roots the core currently trusts (signed length); no block download needed.
    treeHash: hex(core.state.hash()),
    byteLength: core.byteLength,
    treeByteLength: treeByteLength(core),
    fork: core.fork,
    contiguousLength: core.contiguousLength
  }
}

async function digestBlocks(core, start, end) {
  const d = new BlocksDigest()
  for (let i = start; i < end; i++) d.add(await core.get(i, { wait: false }))
  return d.hex()
}

// ---------------------------------------------------------------- --trace

const CONTROL_TYPES = ['batch', 'open', 'reject', 'close']
const WIRE_TYPES = [
  ['sync', wire.sync],
  ['request', wire.request],
  ['cancel', wire.cancel],
  ['data', wire.data],
  ['noData', wire.noData],
  ['want', wire.want],
  ['unwant', wire.unwant],
  ['bitfield', wire.bitfield],
  ['range', wire.range],
  ['extension', wire.extension]
]

function jsonable(v) {
  if (v === null || v === undefined) return v ?? null
  if (ArrayBuffer.isView(v)) {
    const h = hex(v)
    return h.length > 512 ? `${h.slice(0, 512)}…(${v.byteLength} bytes)` : h
  }
  if (Array.isArray(v)) return v.map(jsonable)
  if (typeof v === 'object') {
    const o = {}
    for (const [k, x] of Object.entries(v)) o[k] = jsonable(x)
    return o
  }
  return v
}

// Decodes one decrypted protomux frame into a list of messages. `channels` maps the sender's
// channel ids (announced in its own `open`) to protocol names, per direction.
function decodeFrame(buf, channels) {
  const msgs = []
  const state = { buffer: buf, start: 0, end: buf.byteLength }
  decodeMessage(c.uint.decode(state), state, channels, msgs)
  return msgs
}

function decodeMessage(channel, state, channels, msgs) {
  const type = c.uint.decode(state)
  if (channel === 0) {
    const name = CONTROL_TYPES[type] || `control-${type}`
    if (type === 0) {
      const end = state.end
      let ch = c.uint.decode(state)
      while (state.start < end) {
        const len = c.uint.decode(state)
        if (len === 0) {
          ch = c.uint.decode(state)
          continue
        }
        const sub = { buffer: state.buffer, start: state.start, end: Math.min(state.start + len, end) }
        const inner = []
        decodeMessage(ch, sub, channels, inner)
        for (const m of inner) msgs.push({ ...m, inBatch: true })
        state.start += len
      }
      return
    }
    if (type === 1) {
      const id = c.uint.decode(state)
      const protocol = c.string.decode(state)
      const cid = c.optionalBuffer.decode(state)
      channels.set(id, protocol)
      const m = { channel: 0, type: name, fields: { id, protocol, id32: cid } }
      if (protocol === 'hypercore/alpha' && state.start < state.end) {
        m.fields.handshake = wire.handshake.decode(state)
      }
      msgs.push(jsonable(m))
      return
    }
    if (type === 2 || type === 3) {
      const id = c.uint.decode(state)
      if (type === 3) channels.delete(id)
      msgs.push({ channel: 0, type: name, fields: { id } })
      return
    }
    msgs.push({ channel: 0, type: name })
    return
  }
  const protocol = channels.get(channel) || null
  if (protocol === 'hypercore/alpha' && WIRE_TYPES[type]) {
    const [name, enc] = WIRE_TYPES[type]
    msgs.push(jsonable({ channel, type: name, fields: enc.decode(state) }))
  } else {
    msgs.push({ channel, type: `${protocol || 'unknown'}#${type}` })
  }
}

// --corrupt-block I (testing aid): flips the last byte of block I's value in outgoing `data`
// messages, after the proof was built, so the receiver must reject it as unverifiable.
function corruptFrame(buf, target) {
  const out = Buffer.from(buf) // never mutate a buffer hypercore may still hold
  const state = { buffer: out, start: 0, end: out.byteLength }
  const visit = (channel, st) => {
    const type = c.uint.decode(st)
    if (channel === 0 && type === 0) {
      const end = st.end
      let ch = c.uint.decode(st)
      while (st.start < end) {
        const len = c.uint.decode(st)
        if (len === 0) {
          ch = c.uint.decode(st)
          continue
        }
        visit(ch, { buffer: out, start: st.start, end: st.start + len })
        st.start += len
      }
      return
    }
    if (channel === 0 || type !== 3) return
    const flags = c.uint.decode(st)
    c.uint.decode(st) // request id
    c.uint.decode(st) // fork
    if (!(flags & 1)) return
    const index = c.uint.decode(st)
    const len = c.uint.decode(st)
    if (index === target && len > 0) out[st.start + len - 1] ^= 0xff
  }
  try {
    visit(c.uint.decode(state), state)
  } catch {
    return buf
  }
  return out
}

function installCorruption(ns, target) {
  const write = ns.write
  ns.write = function (buf, ...rest) {
    return write.call(this, ArrayBuffer.isView(buf) ? corruptFrame(buf, target) : buf, ...rest)
  }
}

function installTrace(ns, conn, maxHex) {
  const channels = { in: new Map(), out: new Map() }
  const line = (obj) => process.stderr.write('TRACE ' + JSON.stringify(obj) + '\n')
  const frame = (dir, buf) => {
    let decoded
    try {
      decoded = buf.byteLength === 0 ? [{ type: 'keep-alive' }] : decodeFrame(buf, channels[dir])
    } catch (err) {
      decoded = [{ type: 'undecodable', error: err.message }]
    }
    const h = hex(buf)
    const rec = { conn, dir, len: buf.byteLength, hex: maxHex && h.length > 2 * maxHex ? h.slice(0, 2 * maxHex) : h }
    if (rec.hex.length < h.length) rec.truncated = true
    rec.msgs = decoded
    line(rec)
  }
  ns.on('handshake', () => {
    line({
      conn,
      event: 'handshake',
      isInitiator: ns.isInitiator,
      handshakeHash: hex(ns.handshakeHash),
      publicKey: hex(ns.publicKey),
      remotePublicKey: hex(ns.remotePublicKey)
    })
  })
  ns.on('data', (buf) => frame('in', buf))
  const write = ns.write
  ns.write = function (buf, ...rest) {
    if (ArrayBuffer.isView(buf)) frame('out', buf)
    return write.call(this, buf, ...rest)
  }
}

// ---------------------------------------------------------------- networking

class Network {
  constructor(core, opts) {
    this.core = core
    this.opts = opts
    this.connections = new Set()
    this.nextConn = 1
    this.server = null
    this.noiseKeyPair = opts['noise-seed'] ? hcrypto.keyPair(hexArg(opts, 'noise-seed', 32)) : null
    this.onPeerOpen = null
    this.onConnClose = null
  }

  attach(socket, isInitiator) {
    const conn = this.nextConn++
    const remote = `${socket.remoteAddress}:${socket.remotePort}`
    socket.setNoDelay(true)
    const ns = new NoiseSecretStream(isInitiator, socket, this.noiseKeyPair ? { keyPair: this.noiseKeyPair } : {})
    if (this.opts['corrupt-block'] !== undefined) installCorruption(ns, this.opts['corrupt-block'])
    if (this.opts.trace) installTrace(ns, conn, this.opts['trace-max'] || 0)
    this.connections.add(ns)
    ns.on('error', (err) => log(`connection ${conn} error: ${err.message}`))
    ns.on('close', () => {
      this.connections.delete(ns)
      emit({ event: 'disconnect', conn, remote })
      if (this.onConnClose) this.onConnClose(conn)
    })
    ns.opened.then((ok) => {
      if (ok) emit({ event: 'connection', conn, remote, initiator: isInitiator, handshakeHash: hex(ns.handshakeHash) })
    })
    this.core.replicate(ns)
    return ns
  }

  listen(hp) {
    return new Promise((resolve, reject) => {
      this.server = net.createServer((socket) => this.attach(socket, false))
      this.server.once('error', reject)
      this.server.listen(hp.port, hp.host, () => {
        const a = this.server.address()
        emit({ event: 'listening', host: a.address, port: a.port })
        resolve(a)
      })
    })
  }

  // Dials until the listener is up (tests start both sides at once) or the deadline passes.
  async connect(hp, deadlineMs) {
    for (;;) {
      try {
        const socket = await new Promise((resolve, reject) => {
          const s = net.connect(hp.port, hp.host)
          s.once('connect', () => {
            s.removeListener('error', reject)
            resolve(s)
          })
          s.once('error', reject)
        })
        return this.attach(socket, true)
      } catch (err) {
        if (err.code !== 'ECONNREFUSED' || Date.now() > deadlineMs) {
          throw new CliError('CONNECT_FAILED', `cannot connect to ${hp.host}:${hp.port}: ${err.message}`, EXIT.ERROR)
        }
        await sleep(100)
      }
    }
  }

  async close() {
    if (this.server) this.server.close()
    for (const ns of this.connections) ns.destroy()
  }
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms))
}

function tempDir(prefix) {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), prefix))
  process.on('exit', () => fs.rmSync(d, { recursive: true, force: true }))
  return d
}

function setupSignals(cleanup) {
  const stop = (sig) => {
    log(`${sig}, closing`)
    Promise.resolve(cleanup())
      .catch(() => {})
      .then(() => {
        emit({ event: 'exit', signal: sig })
        exit(EXIT.OK)
      })
  }
  process.once('SIGTERM', () => stop('SIGTERM'))
  process.once('SIGINT', () => stop('SIGINT'))
}

// ---------------------------------------------------------------- write

async function cmdWrite(opts) {
  onlyFlags(opts, [
    'dir', 'seed', 'compat', 'encryption-key', 'blocks', 'block-size', 'empty-every', 'large-every',
    'large-size', 'from-file', 'stdin', 'hex', 'truncate', 'then-blocks', 'listen', 'connect', 'once',
    'no-digest', 'timeout', 'trace', 'trace-max', 'noise-seed', 'quiet', 'corrupt-block'
  ], 'write')
  if (opts.listen && opts.connect) throw usageError('give at most one of --listen and --connect')
  const seed = hexArg(opts, 'seed', 32)
  const encryptionKey = hexArg(opts, 'encryption-key', 32)
  const dir = opts.dir || tempDir('cloudpal-peer-write-')

  const coreOpts = {}
  if (seed) coreOpts.keyPair = hcrypto.keyPair(seed)
  if (opts.compat) coreOpts.compat = true
  if (encryptionKey) coreOpts.encryptionKey = encryptionKey
  const core = new Hypercore(dir, coreOpts)
  await core.ready()
  if (!core.writable) throw new CliError('NOT_WRITABLE', `the core in ${dir} is not writable here`, EXIT.ERROR)
  log(`core ${hex(core.key)} length ${core.length} fork ${core.fork} in ${dir}`)

  const appendGenerated = async (count) => {
    const fork = core.fork
    let batch = []
    let batchBytes = 0
    for (let n = 0; n < count; n++) {
      const index = core.length + batch.length
      const block = blockContent(index, blockSize(index, opts), fork)
      batch.push(block)
      batchBytes += block.byteLength
      if (batch.length >= 1024 || batchBytes >= 16 * 1048576) {
        await core.append(batch)
        batch = []
        batchBytes = 0
      }
    }
    if (batch.length) await core.append(batch)
  }

  const t0 = Date.now()
  if (opts.blocks) await appendGenerated(opts.blocks)
  if (opts['from-file']) {
    const lines = splitLines(fs.readFileSync(opts['from-file']), !!opts.hex)
    for (let i = 0; i < lines.length; i += 1024) await core.append(lines.slice(i, i + 1024))
  }
  if (opts.truncate !== undefined) {
    if (opts.truncate > core.length) {
      throw usageError(`--truncate ${opts.truncate} is beyond the length ${core.length}`)
    }
    await core.truncate(opts.truncate)
    log(`truncated to ${core.length}, fork ${core.fork}`)
  }
  if (opts['then-blocks']) await appendGenerated(opts['then-blocks'])
  const appendMs = Date.now() - t0

  const ready = { event: 'ready', ...coreState(core), publicKey: hex(core.keyPair.publicKey) }
  ready.compat = core.core.compat
  ready.encrypted = !!encryptionKey
  ready.dir = dir
  ready.appendMs = appendMs
  if (!opts['no-digest']) ready.blocksSha256 = await digestBlocks(core, 0, core.length)
  emit(ready)

  const net_ = new Network(core, opts)
  const cleanup = async () => {
    await net_.close()
    await core.close()
  }
  setupSignals(cleanup)

  // Live appends from stdin, one block per line, strictly in arrival order.
  if (opts.stdin) {
    let pending = Buffer.alloc(0)
    let chain = Promise.resolve()
    const appendLive = (line) => {
      chain = chain
        .then(async () => {
          const block = opts.hex ? decodeHexLine(line) : line
          await core.append(block)
          emit({ event: 'append', index: core.length - 1, size: block.byteLength, ...coreState(core) })
        })
        .catch(fail)
    }
    process.stdin.on('data', (chunk) => {
      pending = Buffer.concat([pending, chunk])
      let nl
      while ((nl = pending.indexOf(10)) !== -1) {
        appendLive(Buffer.from(pending.subarray(0, nl)))
        pending = pending.subarray(nl + 1)
      }
    })
    process.stdin.on('end', () => {
      if (pending.byteLength) appendLive(Buffer.from(pending))
      chain = chain.then(async () => {
        if (core.closing) return
        emit({ event: 'eof', length: core.length })
        if (!opts.listen && !opts.connect) {
          await core.close() // nothing to serve: an offline live writer ends with its input
          exit(EXIT.OK)
        }
      })
    })
  }

  if (opts.listen) {
    net_.onConnClose = () => {
      if (opts.once) cleanup().then(() => exit(EXIT.OK))
    }
    await net_.listen(parseHostPort(opts.listen, 'listen'))
  } else if (opts.connect) {
    const deadline = Date.now() + 1000 * (opts.timeout ?? 30)
    net_.onConnClose = () => cleanup().then(() => exit(EXIT.OK))
    await net_.connect(parseHostPort(opts.connect, 'connect'), deadline)
  } else if (!opts.stdin) {
    await core.close()
    exit(EXIT.OK)
  }
}

// ---------------------------------------------------------------- read

async function cmdRead(opts) {
  onlyFlags(opts, [
    'key', 'dir', 'encryption-key', 'compat', 'connect', 'listen', 'start', 'end', 'live', 'expect-length',
    'summary', 'raw', 'timeout', 'trace', 'trace-max', 'noise-seed', 'quiet'
  ], 'read')
  const key = hexArg(opts, 'key', 32)
  if (!key) throw usageError('read needs --key')
  if (!!opts.listen === !!opts.connect) throw usageError('read needs exactly one of --listen and --connect')
  if (opts.end !== undefined && opts.start !== undefined && opts.end < opts.start) {
    throw usageError('--end must not be below --start')
  }
  const encryptionKey = hexArg(opts, 'encryption-key', 32)
  const dir = opts.dir || tempDir('cloudpal-peer-read-')

  let core = null
  const timeoutS = opts.timeout ?? (opts.live && opts['expect-length'] === undefined ? 0 : 60)
  if (timeoutS > 0) {
    setTimeout(() => {
      fail(new CliError('TIMEOUT', `no result within ${timeoutS}s (length ${core ? core.length : 0})`, EXIT.TIMEOUT))
    }, timeoutS * 1000).unref()
  }

  const coreOpts = {}
  if (encryptionKey) coreOpts.encryptionKey = encryptionKey
  if (opts.compat) coreOpts.compat = true
  core = new Hypercore(dir, key, coreOpts)
  await core.ready()
  core.on('verification-error', (err) => {
    fail(new CliError('VERIFICATION_FAILED', `block/proof from the peer does not verify: ${err.message}`, EXIT.VERIFICATION))
  })
  log(`reading ${hex(core.key)} (local length ${core.length}) into ${dir}`)

  const net_ = new Network(core, opts)
  const t0 = Date.now()
  const digest = new BlocksDigest()
  let start = 0
  let next = 0
  let synced = false // the initial range is downloaded; from here on an end of input is a normal end
  let finished = false
  const finish = async () => {
    if (finished) return
    finished = true
    emit({
      event: 'done',
      ...coreState(core),
      start,
      end: next,
      blocks: digest.count,
      bytes: digest.bytes,
      blocksSha256: digest.hex(),
      elapsedMs: Date.now() - t0
    })
    await net_.close()
    await core.close()
    exit(EXIT.OK)
  }
  // A live reader without --expect-length ends with a summary when stopped or when the writer leaves.
  const liveOpenEnded = opts.live && opts['expect-length'] === undefined
  setupSignals(async () => {
    if (synced && liveOpenEnded) await finish()
    await net_.close()
    await core.close()
  })
  net_.onConnClose = () => {
    if (finished || !opts.connect) return
    if (synced && liveOpenEnded) {
      finish().catch(fail)
      return
    }
    fail(new CliError('DISCONNECTED', `the peer closed the connection before the read finished (length ${core.length})`, EXIT.ERROR))
  }

  const peerUp = new Promise((resolve) => core.once('peer-add', resolve))
  const doneFinding = core.findingPeers()
  if (opts.listen) await net_.listen(parseHostPort(opts.listen, 'listen'))
  else await net_.connect(parseHostPort(opts.connect, 'connect'), Date.now() + 1000 * (timeoutS || 30))
  await peerUp
  doneFinding()

  await core.update({ wait: true })
  start = opts.start ?? 0
  // Without --live, --expect-length N means "wait until the core is N long, then read it";
  // with --live the initial pass reads what is there and the live loop goes on until N.
  const waitFor = opts.end ?? (opts.live ? 0 : opts['expect-length'] ?? 0)
  while (core.length < waitFor) await waitForAppend(core)
  const end = opts.end ?? (opts.live ? core.length : opts['expect-length'] ?? core.length)
  if (start > end) throw usageError(`--start ${start} is beyond the end ${end}`)

  const getOpts = opts.raw ? { raw: true } : {}
  const printBlock = (i, block) => {
    digest.add(block)
    if (!opts.summary) emit({ event: 'block', index: i, size: block.byteLength, hex: hex(block) })
  }

  // Sparse download of [start, end); blocks are printed in order as they arrive.
  const range = end > start ? core.download({ start, end }) : null
  for (let i = start; i < end; i++) printBlock(i, await core.get(i, getOpts))
  if (range) await range.done()

  next = end

  if (opts.live) {
    synced = true
    emit({ event: 'synced', ...coreState(core), start, end })
    const stopAt = opts['expect-length']
    while (stopAt === undefined || next < stopAt) {
      while (core.length <= next) await waitForAppend(core)
      const upTo = stopAt === undefined ? core.length : Math.min(core.length, stopAt)
      const r = core.download({ start: next, end: upTo })
      for (; next < upTo; next++) printBlock(next, await core.get(next, getOpts))
      await r.done()
    }
  }

  await finish()
}

function waitForAppend(core) {
  return new Promise((resolve) => {
    const done = () => {
      core.removeListener('append', done)
      core.removeListener('truncate', done)
      resolve()
    }
    core.on('append', done)
    core.on('truncate', done)
  })
}

// ---------------------------------------------------------------- info

async function cmdInfo(opts) {
  onlyFlags(opts, ['dir', 'encryption-key', 'compat', 'dump', 'raw', 'no-digest', 'quiet', 'timeout'], 'info')
  if (!opts.dir) throw usageError('info needs --dir')
  if (!fs.existsSync(opts.dir)) throw new CliError('NO_CORE', `no such directory: ${opts.dir}`, EXIT.ERROR)
  const encryptionKey = hexArg(opts, 'encryption-key', 32)
  const coreOpts = { createIfMissing: false }
  if (encryptionKey) coreOpts.encryptionKey = encryptionKey
  if (opts.compat) coreOpts.compat = true
  const core = new Hypercore(opts.dir, coreOpts)
  try {
    await core.ready()
  } catch (err) {
    throw new CliError('NO_CORE', `cannot open a core in ${opts.dir}: ${err.message}`, EXIT.ERROR)
  }
  const info = { event: 'info', ...coreState(core) }
  info.writable = core.writable
  info.compat = core.core.compat
  info.padding = core.padding
  info.manifest = core.manifest ? jsonable(core.manifest) : null
  if (core.contiguousLength === core.length && !opts['no-digest'] && !opts.raw) {
    info.blocksSha256 = await digestBlocks(core, 0, core.length)
  }
  emit(info)
  if (opts.dump) {
    for (let i = 0; i < core.length; i++) {
      if (!(await core.has(i))) continue
      const block = await core.get(i, { wait: false, ...(opts.raw ? { raw: true } : {}) })
      emit({ event: 'block', index: i, size: block.byteLength, hex: hex(block) })
    }
  }
  await core.close()
}

// ---------------------------------------------------------------- main

async function main() {
  const argv = process.argv.slice(2)
  const cmd = argv[0]
  if (!cmd || cmd === '--help' || cmd === '-h' || cmd === 'help') {
    process.stdout.write(USAGE + '\n')
    exit(cmd ? EXIT.OK : EXIT.USAGE)
  }
  ROLE = cmd
  const opts = parseArgs(argv.slice(1))
  QUIET = !!opts.quiet
  if (opts._.length) throw usageError(`unexpected argument ${opts._[0]}`)
  if (cmd === 'write') return cmdWrite(opts)
  if (cmd === 'read') return cmdRead(opts)
  if (cmd === 'info') return cmdInfo(opts)
  throw usageError(`unknown command ${cmd}`)
}

module.exports = { blockContent, blockSize, BlocksDigest }

if (require.main === module) {
  process.on('unhandledRejection', fail)
  main().catch(fail)
}
