#!/usr/bin/env node
// Self-test of peer.js: JS writer -> JS reader over loopback TCP for every mode the interop tests
// rely on. Run from anywhere: `node js/selftest.js` (or `bash js/selftest.sh`). Exit 0 iff all pass.
'use strict'

const { spawn } = require('child_process')
const fs = require('fs')
const os = require('os')
const path = require('path')
const assert = require('assert')
const { blockContent, blockSize, BlocksDigest } = require('./peer.js')

const PEER = path.join(__dirname, 'peer.js')
const SEED = '000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f'
const KEY_ABC = '798b52954f2f524c0a491fd95e508007de655fbdc048947a8afa2e65f1a03b77'
const TREE_ABC = '7ea73eb86179fb7328e73663f90f4c91256574af1112efe97fdf9309e03b67a7'
const ENC_KEY = '42'.repeat(32)
const TMP = fs.mkdtempSync(path.join(os.tmpdir(), 'cloudpal-selftest-'))
const children = new Set()

// A running peer.js with its stdout parsed into JSON events.
class Peer {
  constructor(args, { stdin = false } = {}) {
    this.args = args
    this.events = []
    this.waiters = []
    this.stderr = ''
    this.proc = spawn(process.execPath, [PEER, ...args, '--quiet'], {
      stdio: [stdin ? 'pipe' : 'ignore', 'pipe', 'pipe']
    })
    children.add(this.proc)
    let buf = ''
    this.proc.stdout.on('data', (d) => {
      buf += d
      let nl
      while ((nl = buf.indexOf('\n')) !== -1) {
        const ev = JSON.parse(buf.slice(0, nl))
        buf = buf.slice(nl + 1)
        this.events.push(ev)
        this._check()
      }
    })
    this.proc.stderr.on('data', (d) => {
      this.stderr += d
    })
    this.exited = new Promise((resolve) => {
      this.proc.on('close', (code) => {
        children.delete(this.proc)
        this.code = code
        this._check()
        resolve(code)
      })
    })
  }

  _check() {
    for (const w of this.waiters.slice()) {
      const ev = this.events.find(w.pred)
      if (ev) {
        this.waiters.splice(this.waiters.indexOf(w), 1)
        w.resolve(ev)
      } else if (this.code !== undefined) {
        this.waiters.splice(this.waiters.indexOf(w), 1)
        w.reject(new Error(`peer ${this.args[0]} exited ${this.code} before the event (${this.events.length} events: ${this.events.map((e) => e.event).join(",").slice(-200)}): ${this.lastError()}`))
      }
    }
  }

  lastError() {
    const e = this.events.find((x) => x.event === 'error')
    return e ? `${e.code}: ${e.message}` : this.stderr.slice(-500)
  }

  waitFor(event, timeoutMs = 30000, pred = () => true) {
    return new Promise((resolve, reject) => {
      const w = { pred: (e) => e.event === event && pred(e), resolve, reject }
      const t = setTimeout(() => reject(new Error(`timeout waiting for ${event} from ${this.args[0]}`)), timeoutMs)
      w.resolve = (e) => {
        clearTimeout(t)
        resolve(e)
      }
      w.reject = (e) => {
        clearTimeout(t)
        reject(e)
      }
      this.waiters.push(w)
      this._check()
    })
  }

  blocks() {
    return this.events.filter((e) => e.event === 'block')
  }

  async finish(timeoutMs = 60000) {
    const done = await this.waitFor('done', timeoutMs)
    const code = await this.exited
    assert.strictEqual(code, 0, `exit code ${code}: ${this.lastError()}`)
    return done
  }

  kill() {
    if (this.code === undefined) this.proc.kill('SIGTERM')
    return this.exited
  }
}

async function serve(args, opts) {
  const w = new Peer(['write', ...args, '--listen', '127.0.0.1:0'], opts)
  const ready = await w.waitFor('ready', 120000)
  const { port } = await w.waitFor('listening')
  return { w, ready, addr: `127.0.0.1:${port}` }
}

function dir(name) {
  return path.join(TMP, name)
}

function hexBlock(i, size, salt) {
  return blockContent(i, size, salt).toString('hex')
}

// ------------------------------------------------------------------ scenarios

const tests = []
function test(name, fn) {
  tests.push({ name, fn })
}

test('3 blocks (known key and tree hash), writer listens', async () => {
  fs.writeFileSync(dir('abc.txt'), 'a\nb\nc\n')
  const { w, ready, addr } = await serve(['--dir', dir('abc'), '--seed', SEED, '--from-file', dir('abc.txt')])
  assert.strictEqual(ready.key, KEY_ABC)
  assert.strictEqual(ready.treeHash, TREE_ABC)
  const r = new Peer(['read', '--key', KEY_ABC, '--connect', addr])
  const done = await r.finish()
  assert.deepStrictEqual(r.blocks().map((b) => b.hex), ['61', '62', '63'])
  assert.strictEqual(done.treeHash, TREE_ABC)
  assert.strictEqual(done.length, 3)
  assert.strictEqual(done.blocksSha256, ready.blocksSha256)
  await w.kill()
})

test('3 blocks, roles swapped (reader listens, writer dials)', async () => {
  const r = new Peer(['read', '--key', KEY_ABC, '--listen', '127.0.0.1:0'])
  const { port } = await r.waitFor('listening')
  const w = new Peer(['write', '--dir', dir('abc'), '--connect', `127.0.0.1:${port}`])
  const done = await r.finish()
  assert.deepStrictEqual(r.blocks().map((b) => b.hex), ['61', '62', '63'])
  assert.strictEqual(done.treeHash, TREE_ABC)
  assert.strictEqual(await w.exited, 0) // the dialing writer exits when the reader hangs up
})

const BIG = ['--blocks', '10000', '--block-size', '1024', '--empty-every', '7', '--large-every', '500']
let big = null

test('10,000 blocks incl. empty and 1 MiB blocks (summary)', async () => {
  big = await serve(['--dir', dir('big'), ...BIG])
  const { ready, addr } = big
  assert.strictEqual(ready.length, 10000)
  const expected = new BlocksDigest()
  const opts = { 'block-size': 1024, 'empty-every': 7, 'large-every': 500 }
  for (let i = 0; i < 10000; i++) expected.add(blockContent(i, blockSize(i, opts), 0))
  assert.strictEqual(ready.blocksSha256, expected.hex())
  assert.strictEqual(ready.byteLength, expected.bytes)
  const t0 = Date.now()
  const r = new Peer(['read', '--key', ready.key, '--connect', addr, '--summary'])
  const done = await r.finish(120000)
  const ms = Date.now() - t0
  assert.strictEqual(done.length, 10000)
  assert.strictEqual(done.contiguousLength, 10000)
  assert.strictEqual(done.treeHash, ready.treeHash)
  assert.strictEqual(done.blocksSha256, ready.blocksSha256)
  return `writer append ${ready.appendMs} ms; reader ${done.elapsedMs} ms replicating ` +
    `${(done.bytes / 1048576).toFixed(1)} MiB (${ms} ms incl. process start)`
})

test('range download [4990, 5010) is sparse', async () => {
  const { ready, addr } = big
  const r = new Peer(['read', '--key', ready.key, '--connect', addr, '--start', '4990', '--end', '5010'])
  const done = await r.finish()
  const opts = { 'block-size': 1024, 'empty-every': 7, 'large-every': 500 }
  const got = r.blocks()
  assert.deepStrictEqual(got.map((b) => b.index), Array.from({ length: 20 }, (_, k) => 4990 + k))
  for (const b of got) assert.strictEqual(b.hex, hexBlock(b.index, blockSize(b.index, opts), 0))
  assert.ok(got.some((b) => b.size === 0) && got.some((b) => b.size === 1048576))
  assert.strictEqual(done.contiguousLength, 0)
  assert.strictEqual(done.treeHash, ready.treeHash)
  await big.w.kill()
})

test('live append (writer --stdin, reader --live)', async () => {
  const { w, ready, addr } = await serve(['--dir', dir('live'), '--blocks', '3', '--block-size', '5', '--stdin'], {
    stdin: true
  })
  const r = new Peer(['read', '--key', ready.key, '--connect', addr, '--live', '--expect-length', '6'])
  await r.waitFor('synced')
  for (const [k, line] of ['d', 'ee', ''].entries()) {
    w.proc.stdin.write(line + '\n')
    const ev = await w.waitFor('append', 10000, (e) => e.index === 3 + k)
    assert.strictEqual(ev.size, line.length)
  }
  const done = await r.finish()
  const hexes = r.blocks().map((b) => b.hex)
  assert.deepStrictEqual(hexes.slice(3), ['64', '6565', ''])
  assert.strictEqual(done.length, 6)
  const lastAppend = w.events.filter((e) => e.event === 'append').pop()
  assert.strictEqual(done.treeHash, lastAppend.treeHash)
  w.proc.stdin.end()
  await w.kill()
})

test('open-ended live reader ends with a summary when the writer leaves', async () => {
  const { w, ready, addr } = await serve(['--dir', dir('live2'), '--blocks', '2', '--stdin'], { stdin: true })
  const r = new Peer(['read', '--key', ready.key, '--connect', addr, '--live'])
  await r.waitFor('synced')
  w.proc.stdin.write('late\n')
  await r.waitFor('block', 10000, (e) => e.index === 2)
  await w.kill()
  const done = await r.finish()
  assert.strictEqual(done.length, 3)
  assert.strictEqual(r.blocks()[2].hex, Buffer.from('late').toString('hex'))
})

test('--trace prints the handshake hash and decoded frames', async () => {
  const { w, addr } = await serve(['--dir', dir('abc')])
  const r = new Peer(['read', '--key', KEY_ABC, '--connect', addr, '--trace'])
  const conn = await r.waitFor('connection')
  await r.finish()
  const lines = r.stderr.split('\n').filter((l) => l.startsWith('TRACE ')).map((l) => JSON.parse(l.slice(6)))
  assert.strictEqual(lines.find((l) => l.event === 'handshake').handshakeHash, conn.handshakeHash)
  const types = lines.flatMap((l) => (l.msgs || []).map((m) => `${l.dir}:${m.type}`))
  for (const t of ['out:open', 'in:open', 'out:sync', 'in:sync', 'in:range', 'out:request', 'in:data']) {
    assert.ok(types.includes(t), `missing ${t} in ${types.join(',')}`)
  }
  const data = lines.flatMap((l) => l.msgs || []).filter((m) => m.type === 'data' && m.fields.block)
  assert.deepStrictEqual(data.map((m) => m.fields.block.value).sort(), ['61', '62', '63'])
  await w.kill()
})

test('encrypted core (encryptionKey): plaintext with the key, ciphertext without', async () => {
  fs.writeFileSync(dir('enc.txt'), ['', '00', 'ff'.repeat(100)].join('\n') + '\n')
  const { w, ready, addr } = await serve(['--dir', dir('enc'), '--seed', SEED, '--encryption-key', ENC_KEY,
    '--from-file', dir('enc.txt'), '--hex'])
  assert.strictEqual(ready.treeByteLength, ready.byteLength + 8 * 3)
  const r = new Peer(['read', '--key', ready.key, '--connect', addr, '--encryption-key', ENC_KEY])
  const done = await r.finish()
  assert.deepStrictEqual(r.blocks().map((b) => b.hex), ['', '00', 'ff'.repeat(100)])
  assert.strictEqual(done.treeHash, ready.treeHash)
  const raw = new Peer(['read', '--key', ready.key, '--connect', addr])
  await raw.finish()
  const ct = raw.blocks()
  assert.deepStrictEqual(ct.map((b) => b.size), [8, 9, 108])
  assert.notStrictEqual(ct[2].hex.slice(16), 'ff'.repeat(100))
  await w.kill()
})

test('encrypted compat core (reader needs --compat with hypercore 11.37.1)', async () => {
  const { w, ready, addr } = await serve(['--dir', dir('encc'), '--seed', SEED, '--compat',
    '--encryption-key', ENC_KEY, '--blocks', '20', '--block-size', '300'])
  assert.strictEqual(ready.key, ready.publicKey)
  const r = new Peer(['read', '--key', ready.key, '--connect', addr, '--encryption-key', ENC_KEY, '--compat'])
  const done = await r.finish()
  assert.strictEqual(done.blocksSha256, ready.blocksSha256)
  await w.kill()
})

test('truncated core: fork 1, stale and fresh readers', async () => {
  const d = dir('trunc')
  const a = await serve(['--dir', d, '--blocks', '10', '--block-size', '10'])
  const stale = dir('trunc-reader')
  const r1 = new Peer(['read', '--key', a.ready.key, '--dir', stale, '--connect', a.addr, '--summary'])
  assert.strictEqual((await r1.finish()).fork, 0)
  await a.w.kill()

  const b = await serve(['--dir', d, '--truncate', '5', '--then-blocks', '3', '--block-size', '10'])
  assert.strictEqual(b.ready.fork, 1)
  assert.strictEqual(b.ready.length, 8)
  for (const rdir of [stale, dir('trunc-fresh')]) {
    const r = new Peer(['read', '--key', b.ready.key, '--dir', rdir, '--connect', b.addr])
    const done = await r.finish()
    assert.strictEqual(done.fork, 1)
    assert.strictEqual(done.length, 8)
    assert.strictEqual(done.treeHash, b.ready.treeHash)
    const hexes = r.blocks().map((x) => x.hex)
    for (let i = 0; i < 8; i++) assert.strictEqual(hexes[i], hexBlock(i, 10, i < 5 ? 0 : 1))
  }
  await b.w.kill()
})

test('timeout and unknown key fail with exit code 2', async () => {
  const { w, addr } = await serve(['--dir', dir('abc')])
  const r = new Peer(['read', '--key', '77'.repeat(32), '--connect', addr, '--timeout', '1.5'])
  const err = await r.waitFor('error')
  assert.strictEqual(err.code, 'TIMEOUT')
  assert.strictEqual(await r.exited, 2)
  await w.kill()
})

test('a corrupted block fails verification with exit code 3', async () => {
  const { w, addr } = await serve(['--dir', dir('abc'), '--corrupt-block', '1'])
  const r = new Peer(['read', '--key', KEY_ABC, '--connect', addr, '--timeout', '10'])
  const err = await r.waitFor('error')
  assert.strictEqual(err.code, 'VERIFICATION_FAILED')
  assert.strictEqual(await r.exited, 3)
  await w.kill()
})

test('info --dump', async () => {
  const p = new Peer(['info', '--dir', dir('enc'), '--encryption-key', ENC_KEY, '--dump'])
  const info = await p.waitFor('info')
  assert.strictEqual(await p.exited, 0)
  assert.strictEqual(info.length, 3)
  assert.strictEqual(info.padding, 8)
  assert.deepStrictEqual(p.blocks().map((b) => b.hex), ['', '00', 'ff'.repeat(100)])
})

// ------------------------------------------------------------------ runner

async function main() {
  let passed = 0
  let failed = 0
  const t00 = Date.now()
  for (const t of tests) {
    const t0 = Date.now()
    try {
      const note = await t.fn()
      passed++
      console.log(`ok   ${t.name} (${Date.now() - t0} ms)${note ? ' — ' + note : ''}`)
    } catch (err) {
      failed++
      console.log(`FAIL ${t.name} (${Date.now() - t0} ms)\n     ${err.stack.split('\n').slice(0, 3).join('\n     ')}`)
    }
  }
  for (const c of children) c.kill('SIGKILL')
  fs.rmSync(TMP, { recursive: true, force: true })
  console.log(`selftest: ${((Date.now() - t00) / 1000).toFixed(1)} s`)
  console.log(`${passed} passed, ${failed} failed`)
  process.exit(failed ? 1 : 0)
}

main()
