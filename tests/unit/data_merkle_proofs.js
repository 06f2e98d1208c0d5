// JS reference for tests/unit/test_data_merkle.py: builds real Hypercore 11 cores and dumps the
// proofs `MerkleTree.proof` generates for many requests, as one JSON document on stdout.
// Run with cwd = js/ (packages resolve from there):  node ../tests/unit/data_merkle_proofs.js
// Proof nodes are dumped as flat-tree indices; the node table (`nodes`) gives their size/hash.
'use strict'
const fs = require('fs')
const os = require('os')
const path = require('path')
const { createRequire } = require('module')
const req = createRequire(path.join(process.cwd(), 'package.json'))
const Hypercore = req('hypercore')
const { MerkleTree } = req('hypercore/lib/merkle-tree')
const crypto = req('hypercore-crypto')
const b4a = req('b4a')
const flat = req('flat-tree')

const hex = (b) => b4a.toString(b, 'hex')

function blockValue(i) {
  // 1..5 bytes, distinct contents
  return b4a.from(Array.from({ length: (i % 5) + 1 }, (_, j) => (i * 7 + j * 13 + 3) & 255))
}

function upgradesAll(n) {
  const out = [null]
  for (let s = 0; s <= n; s++) for (let l = 0; l <= n + 1 - s; l++) out.push([s, l])
  return out
}

function upgradesSome(n) {
  const out = [null]
  for (const s of [0, 1, n >> 1, n - 1, n]) for (const l of [0, 1, 2, n - s, n - s + 1]) {
    if (l >= 0) out.push([s, l])
  }
  return out
}

async function proofOf(core, request) {
  // as lib/replicator.js `_getProof`: generate (may await seeks), then flush the reads, then settle
  const rx = core.state.storage.read()
  try {
    const p = await MerkleTree.proof(core.state, rx, request)
    rx.tryFlush()
    const s = await p.settle()
    const idx = (nodes) => (nodes ? nodes.map((n) => n.index) : null)
    return [
      s.block ? idx(s.block.nodes) : null,
      s.hash ? idx(s.hash.nodes) : null,
      s.seek ? idx(s.seek.nodes) : null,
      s.upgrade ? idx(s.upgrade.nodes) : null,
      s.upgrade ? idx(s.upgrade.additionalNodes) : null,
      s.upgrade ? [s.upgrade.start, s.upgrade.length] : null
    ]
  } catch (err) {
    rx.destroy()
    return 'E:' + err.message
  }
}

async function dumpCore(seed, n) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cloudpal-merkle-'))
  const keyPair = crypto.keyPair(seed)
  const core = new Hypercore(dir, { keyPair })
  await core.ready()
  const blocks = []
  for (let i = 0; i < n; i++) blocks.push(blockValue(i))
  // several appends of different sizes, as a writer would
  for (let i = 0; i < n; ) {
    const k = Math.min(n - i, 1 + (i % 4))
    await core.append(blocks.slice(i, i + k))
    i += k
  }

  const nodes = []
  for (let i = 0; i < 2 * n; i++) {
    const node = await MerkleTree.get(core.state, i)
    if (node) nodes.push([node.index, node.size, hex(node.hash)])
  }

  const requests = []
  for (const up of upgradesAll(n)) {
    const upgrade = up && { start: up[0], length: up[1] }
    requests.push({ upgrade })
    for (let b = 0; b <= n; b++) {
      for (let k = 0; k <= 5; k++) requests.push({ block: { index: b, nodes: k }, upgrade })
    }
  }
  for (const up of upgradesSome(n)) {
    const upgrade = up && { start: up[0], length: up[1] }
    for (let h = 0; h < 2 * n + 2; h++) {
      for (let k = 0; k <= 3; k++) requests.push({ hash: { index: h, nodes: k }, upgrade })
    }
    for (let bytes = 0; bytes <= core.byteLength + 1; bytes++) {
      for (const padding of [0, 1]) {
        requests.push({ seek: { bytes, padding }, upgrade })
        for (const b of [0, 1, n >> 1, n - 1]) {
          for (let k = 0; k <= 2; k++) {
            requests.push({ block: { index: b, nodes: k }, seek: { bytes, padding }, upgrade })
          }
        }
      }
    }
  }

  const cases = []
  const CHUNK = 256
  for (let i = 0; i < requests.length; i += CHUNK) {
    const chunk = requests.slice(i, i + CHUNK)
    const results = await Promise.all(
      chunk.map((r) =>
        proofOf(core, {
          block: r.block || null,
          hash: r.hash || null,
          seek: r.seek || null,
          upgrade: r.upgrade ? { ...r.upgrade } : null
        })
      )
    )
    for (let j = 0; j < chunk.length; j++) {
      const r = chunk[j]
      cases.push([
        r.block ? [r.block.index, r.block.nodes] : null,
        r.hash ? [r.hash.index, r.hash.nodes] : null,
        r.seek ? [r.seek.bytes, r.seek.padding] : null,
        r.upgrade ? [r.upgrade.start, r.upgrade.length] : null,
        results[j]
      ])
    }
  }

  const maxMissing = []
  for (let i = 0; i < 2 * n + 4; i++) {
    for (let len = 0; len <= n + 1; len++) maxMissing.push([i, len, MerkleTree.maxMissingNodes(i, len)])
  }

  const out = {
    n,
    seed: hex(seed),
    key: hex(core.key),
    publicKey: hex(keyPair.publicKey),
    signature: hex(core.state.signature),
    treeHash: hex(await core.treeHash()),
    byteLength: core.byteLength,
    blocks: blocks.map(hex),
    nodes,
    cases,
    maxMissing
  }

  // truncation: a new fork, roots of the shorter tree, re-signed
  const cut = n - 5
  await core.truncate(cut)
  out.truncate = {
    length: core.length,
    fork: core.fork,
    treeHash: hex(await core.treeHash()),
    signature: hex(core.state.signature),
    roots: core.state.roots.map((r) => [r.index, r.size, hex(r.hash)])
  }
  await core.append([b4a.from('after-truncate')])
  out.truncate.appended = {
    length: core.length,
    treeHash: hex(await core.treeHash()),
    signature: hex(core.state.signature)
  }

  await core.close()
  fs.rmSync(dir, { recursive: true, force: true })
  return out
}

const ITE_OPS = ['parent', 'sibling', 'leftChild', 'rightChild', 'next', 'prev', 'nextTree', 'parent',
  'prevTree', 'leftSpan', 'parent', 'rightSpan', 'parent', 'parent', 'leftChild', 'sibling', 'prev', 'rightChild',
  'isLeft', 'isRight', 'count', 'countLeaves', 'peekLeftSpan', 'peekRightSpan']

function dumpFlat() {
  const fns = []
  for (let i = 0; i < 300; i++) {
    fns.push([i, flat.depth(i), flat.offset(i), flat.parent(i), flat.sibling(i), flat.leftChild(i),
      flat.rightChild(i), flat.children(i), flat.leftSpan(i), flat.rightSpan(i), flat.count(i),
      flat.countLeaves(i), flat.spans(i), flat.nextLeaf(i)])
  }
  const roots = []
  for (let i = 0; i <= 130; i++) roots.push([flat.fullRoots(2 * i), flat.futureRoots(2 * i)])
  const patches = []
  for (let a = 0; a <= 40; a++) for (let b = 0; b <= 40; b++) patches.push([a, b, flat.patch(2 * a, 2 * b)])
  const iterators = []
  for (let start = 0; start < 80; start++) {
    const ite = flat.iterator(start)
    const contains = []
    for (let j = 0; j < 40; j++) contains.push(ite.contains(j))
    const isRoot = []
    for (let len = 0; len < 40; len++) isRoot.push(ite.isRoot(len))
    const steps = []
    for (const op of ITE_OPS) {
      const ret = ite[op]()
      steps.push([ret, ite.index, ite.offset, ite.factor])
    }
    iterators.push([start, contains, isRoot, steps])
  }
  const fullRootWalks = []
  for (let to = 0; to <= 130; to += 2) {
    const seen = []
    for (const ite = flat.iterator(0); ite.fullRoot(to); ite.nextTree()) seen.push([ite.index, ite.factor])
    fullRootWalks.push([to, seen])
  }
  return { ops: ITE_OPS, fns, roots, patches, iterators, fullRootWalks }
}

async function main() {
  const cores = []
  cores.push(await dumpCore(b4a.alloc(32, 1), 13))
  cores.push(await dumpCore(b4a.alloc(32, 2), 21))
  process.stdout.write(JSON.stringify({ flat: dumpFlat(), cores }))
}

main().catch((err) => {
  process.stderr.write(String(err && err.stack) + '\n')
  process.exit(1)
})
