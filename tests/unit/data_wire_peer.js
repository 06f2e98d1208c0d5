// JS reference peer for tests/unit/test_data_wire.py: the real @hyperswarm/secret-stream + protomux
// over TCP. Run with cwd = js/ (packages resolve from there):
//   node ../tests/unit/data_wire_peer.js listen          -> prints {"event":"listening","port":N}
//   node ../tests/unit/data_wire_peer.js connect <port>
// Every notable thing is printed as one JSON line on stdout for the Python side to check.
'use strict'
const path = require('path')
const net = require('net')
const { createRequire } = require('module')
const req = createRequire(path.join(process.cwd(), 'package.json'))
const NoiseSecretStream = req('@hyperswarm/secret-stream')
const Protomux = req('protomux')
const c = req('compact-encoding')
const b4a = req('b4a')

const TEST_ID = b4a.from('cloudpal-test-id')
const out = (o) => process.stdout.write(JSON.stringify(o) + '\n')
const hex = (b) => (b ? b4a.toString(b, 'hex') : null)
const reversed = (b) => b4a.from(Uint8Array.from(b).reverse())

function run(socket, isInitiator) {
  const stream = new NoiseSecretStream(isInitiator, socket)
  stream.on('error', (err) => out({ event: 'error', message: String(err) }))
  stream.on('close', () => {
    out({ event: 'end' })
    process.exit(0)
  })
  stream.opened.then((ok) => {
    if (!ok) return
    out({
      event: 'handshake',
      hash: hex(stream.handshakeHash),
      publicKey: hex(stream.publicKey),
      remotePublicKey: hex(stream.remotePublicKey)
    })
    stream.sendKeepAlive() // an empty encrypted message the Python side must swallow
  })

  const mux = new Protomux(stream)

  // Accepts the channel Python opens (JS pairing = Python's open arrives as a request here).
  mux.pair({ protocol: 'cloudpal/from-py' }, (id) => {
    const ch = mux.createChannel({
      protocol: 'cloudpal/from-py',
      id,
      handshake: c.raw,
      messages: [{ encoding: c.raw, onmessage: (m) => ch.messages[1].send(reversed(m)) }, { encoding: c.raw }],
      onopen: (hs) => out({ event: 'from-py-open', handshake: hex(hs) })
    })
    ch.open(b4a.from('js-accepts'))
  })

  // Opened by JS; Python accepts it after a RemoteOpen. 'early' is sent before Python answers.
  const accept = mux.createChannel({
    protocol: 'cloudpal/accept',
    handshake: c.raw,
    messages: [{ encoding: c.raw }],
    onopen: (hs) => out({ event: 'accept-open', handshake: hex(hs) }),
    onclose: (isRemote) => out({ event: 'accept-closed', isRemote })
  })
  accept.open(b4a.from('please-accept'))
  accept.messages[0].send(b4a.from('early'))

  // Opened by JS; Python rejects it.
  const reject = mux.createChannel({
    protocol: 'cloudpal/reject',
    handshake: c.raw,
    onopen: () => out({ event: 'reject-opened-unexpectedly' }),
    onclose: (isRemote) => out({ event: 'rejected', isRemote, opened: reject.opened })
  })
  reject.open(b4a.alloc(0))

  // The main channel, opened by both sides.
  const main = mux.createChannel({
    protocol: 'cloudpal/test',
    id: TEST_ID,
    handshake: c.raw,
    messages: [
      { encoding: c.raw, onmessage: (m) => main.messages[1].send(reversed(m)) }, // 0: echo reversed
      { encoding: c.raw }, // 1: echo replies
      {
        encoding: c.raw, // 2: send an explicit batch spanning two channels
        onmessage: () => {
          mux.cork()
          main.messages[1].send(b4a.from('x1'))
          main.messages[1].send(b4a.from('x2'))
          accept.messages[0].send(b4a.from('y'))
          main.messages[1].send(b4a.from('x3'))
          mux.uncork()
        }
      }
    ],
    onopen: (hs) => out({ event: 'main-open', handshake: hex(hs) }),
    onclose: (isRemote) => {
      out({ event: 'main-closed', isRemote })
      accept.close()
    }
  })
  main.open(b4a.from('js-hello'))
}

const [mode, port] = process.argv.slice(2)
if (mode === 'listen') {
  const server = net.createServer((socket) => {
    server.close()
    run(socket, false)
  })
  server.listen(0, '127.0.0.1', () => out({ event: 'listening', port: server.address().port }))
} else if (mode === 'connect') {
  const socket = net.connect(Number(port), '127.0.0.1')
  run(socket, true)
} else {
  process.stderr.write('usage: data_wire_peer.js listen | connect <port>\n')
  process.exit(2)
}
