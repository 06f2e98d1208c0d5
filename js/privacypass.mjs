#!/usr/bin/env node
// A small CLI around the standard Privacy Pass client/issuer library, @cloudflare/privacypass-ts
// (pinned in package.json), so CloudPal's RFC 9578 / RFC 9577 code can be checked against it.
// Everything cryptographic and every wire encoding here is the library's; this file only moves
// bytes over HTTP and prints what happened. stdout: results (JSON lines, or `ready`/key lines);
// stderr: errors. Exit 0 on success, 1 on failure, 64 on bad usage.
//
//   client --issuer URL --origin URL [--header 'Name: value']... [--origin-header 'Name: value']...
//          [--count N] [--quoted]
//   issuer --port P [--host H] [--key-bits 2048] [--private-key PKCS8.pem] [--name NAME]
//   verify --token-key B64 --token B64 --challenge B64
//   keyinfo --token-key B64
//   mint --challenge B64 [--private-key PKCS8.pem]
import { createServer } from 'node:http'
import { readFileSync } from 'node:fs'
import {
  AuthorizationHeader,
  MediaType,
  PRIVATE_TOKEN_ISSUER_DIRECTORY,
  Token,
  TokenChallenge,
  WWWAuthenticateHeader,
  publicVerif,
  sendTokenRequest,
  util,
} from '@cloudflare/privacypass-ts'

const { BLIND_RSA, BlindRSAMode, Client, Issuer, Origin, TokenRequest, getPublicKeyBytes } = publicVerif
const RSA_PSS = { name: 'RSA-PSS', hash: 'SHA-384' }

const USAGE = `usage: node privacypass.mjs <client|issuer|verify|keyinfo|mint> [options]
client  --issuer URL --origin URL [--header 'Name: value']... [--origin-header 'Name: value']...
        [--count N] [--quoted]
issuer  --port P [--host H] [--key-bits 2048] [--private-key PKCS8.pem] [--name NAME]
verify  --token-key B64 --token B64 --challenge B64
keyinfo --token-key B64
mint    --challenge B64 [--private-key PKCS8.pem]`

class UsageError extends Error {}

// ---------------------------------------------------------------- helpers

function parseArgs(argv) {
  const repeated = new Set(['header', 'origin-header'])
  const flags = new Set(['quoted'])
  const out = { _: [] }
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]
    if (!arg.startsWith('--')) {
      out._.push(arg)
      continue
    }
    let [name, value] = arg.slice(2).split(/=(.*)/s)
    if (flags.has(name)) {
      out[name] = true
      continue
    }
    if (value === undefined) {
      if (i + 1 >= argv.length) throw new UsageError(`--${name} needs a value`)
      value = argv[++i]
    }
    if (repeated.has(name)) (out[name] ||= []).push(value)
    else out[name] = value
  }
  return out
}

function need(args, name) {
  if (args[name] === undefined) throw new UsageError(`--${name} is required`)
  return args[name]
}

// base64url with padding, as RFC 9577/9578 put it on the wire; decoding accepts either.
function b64(bytes) {
  const s = Buffer.from(bytes).toString('base64url')
  return s + '='.repeat((4 - (s.length % 4)) % 4)
}

// A fresh Uint8Array on its own ArrayBuffer: the library reads `bytes.buffer` from offset 0.
function unb64(text, what) {
  if (typeof text !== 'string' || !/^[A-Za-z0-9_-]*={0,2}$/.test(text)) throw new Error(`${what} is not base64url`)
  return new Uint8Array(Buffer.from(text.replace(/=+$/, ''), 'base64url'))
}

function hex(bytes) {
  return Buffer.from(bytes).toString('hex')
}

async function sha256(bytes) {
  return new Uint8Array(await crypto.subtle.digest('SHA-256', bytes))
}

function headerPairs(list) {
  const headers = new Headers()
  for (const line of list || []) {
    const idx = line.indexOf(':')
    if (idx <= 0) throw new UsageError(`header ${JSON.stringify(line)} is not 'Name: value'`)
    headers.append(line.slice(0, idx).trim(), line.slice(idx + 1).trim())
  }
  return headers
}

// A CryptoKey for a token key SPKI (RSASSA-PSS or rsaEncryption), the library's own conversion.
async function importTokenKey(spki) {
  let enc = spki
  try {
    enc = util.convertRSASSAPSSToEnc(spki)
  } catch {
    // not PSS-wrapped: try it as it is
  }
  return crypto.subtle.importKey('spki', enc, RSA_PSS, true, ['verify'])
}

// An RSA-PSS key pair from a PKCS#8 PEM private key (WebCrypto has no "public from private").
async function loadKeyPair(path) {
  const pem = readFileSync(path, 'utf8')
  const der = Buffer.from(pem.replace(/-----[^-]+-----/g, '').replace(/\s+/g, ''), 'base64')
  const privateKey = await crypto.subtle.importKey('pkcs8', der, RSA_PSS, true, ['sign'])
  const { n, e } = await crypto.subtle.exportKey('jwk', privateKey)
  const publicKey = await crypto.subtle.importKey('jwk', { kty: 'RSA', n, e, alg: 'PS384', ext: true }, RSA_PSS,
    true, ['verify'])
  return { privateKey, publicKey }
}

async function makeIssuer(args, name) {
  const pair = args['private-key']
    ? await loadKeyPair(args['private-key'])
    : await Issuer.generateKey(BlindRSAMode.PSS, {
      modulusLength: Number(args['key-bits'] || 2048),
      publicExponent: Uint8Array.from([1, 0, 1]),
    })
  return new Issuer(BlindRSAMode.PSS, name, pair.privateKey, pair.publicKey)
}

// ---------------------------------------------------------------- client

async function fetchChallenge(origin, originHeaders) {
  const res = await fetch(origin, { headers: originHeaders })
  const header = res.headers.get('www-authenticate')
  if (!header) throw new Error(`the origin answered ${res.status} without a WWW-Authenticate challenge`)
  const offered = WWWAuthenticateHeader.parse(header).filter((c) => c.challenge.tokenType === BLIND_RSA.value)
  if (offered.length === 0) throw new Error(`no Blind RSA PrivateToken challenge in ${JSON.stringify(header)}`)
  return { status: res.status, offered }
}

async function fetchDirectory(issuer) {
  const url = new URL(PRIVATE_TOKEN_ISSUER_DIRECTORY, issuer)
  const res = await fetch(url)
  if (res.status !== 200) throw new Error(`the issuer directory at ${url} answered ${res.status}`)
  const config = await res.json()
  const keys = (config['token-keys'] || []).filter((k) => k['token-type'] === BLIND_RSA.value)
  return {
    requestUri: new URL(config['issuer-request-uri'], url).toString(),
    keys: keys.map((k) => unb64(k['token-key'], 'a directory token-key')),
  }
}

async function runClient(args) {
  const issuer = need(args, 'issuer')
  const origin = need(args, 'origin')
  const count = Number(args.count || 1)
  const issuerHeaders = headerPairs(args.header)
  const originHeaders = headerPairs(args['origin-header'])
  const directory = await fetchDirectory(issuer)
  let failures = 0
  for (let attempt = 1; attempt <= count; attempt++) {
    const line = { attempt }
    try {
      const { status, offered } = await fetchChallenge(origin, originHeaders)
      line.challengeStatus = status
      // Use the first challenge whose token key the issuer's directory vouches for (RFC 9577 lets the
      // token-key be omitted: then the directory's preferred key).
      let chosen = offered.find((c) => directory.keys.some((k) => hex(k) === hex(c.tokenKey)))
      let tokenKey = chosen?.tokenKey
      if (!chosen) {
        chosen = offered[0]
        tokenKey = directory.keys[0]
        if (!tokenKey) throw new Error('the issuer directory has no Blind RSA token key')
        if (chosen.tokenKey.length) throw new Error("the challenge's token-key is not in the issuer directory")
      }
      const client = new Client(BlindRSAMode.PSS)
      const request = await client.createTokenRequest(chosen.challenge, tokenKey)
      const headers = new Headers(issuerHeaders)
      const responseBytes = await sendTokenRequest(request.serialize(), directory.requestUri, headers)
      const token = await client.finalize(client.deserializeTokenResponse(responseBytes))
      line.tokenKeyId = hex(token.authInput.tokenKeyId)
      const auth = new AuthorizationHeader(token).toString(Boolean(args.quoted))
      const redeemHeaders = new Headers(originHeaders)
      redeemHeaders.set('Authorization', auth)
      const res = await fetch(origin, { headers: redeemHeaders })
      line.status = res.status
      line.body = await res.text()
      if (res.status < 200 || res.status > 299) failures++
    } catch (err) {
      line.error = err.message
      failures++
    }
    process.stdout.write(JSON.stringify(line) + '\n')
  }
  return failures === 0 ? 0 : 1
}

// ---------------------------------------------------------------- issuer

async function runIssuer(args) {
  const port = Number(need(args, 'port'))
  const host = args.host || '127.0.0.1'
  const issuer = await makeIssuer(args, args.name || `${host}:${port}`)
  const spki = await getPublicKeyBytes(issuer.publicKey)
  const keyId = await issuer.tokenKeyID()
  const notBefore = Math.floor(Date.now() / 1000)
  let issued = 0

  const server = createServer((req, res) => {
    const send = (status, type, body) => {
      res.writeHead(status, { 'Content-Type': type, 'Cache-Control': 'no-store' })
      res.end(body)
    }
    const fail = (status, message) => send(status, 'application/json', JSON.stringify({ error: message }))
    const url = new URL(req.url, 'http://issuer')
    if (req.method === 'GET' && url.pathname === PRIVATE_TOKEN_ISSUER_DIRECTORY) {
      const base = `http://${req.headers.host || `${host}:${port}`}`
      return send(200, MediaType.PRIVATE_TOKEN_ISSUER_DIRECTORY, JSON.stringify({
        'issuer-request-uri': `${base}/token-request`,
        'token-keys': [{ 'token-type': BLIND_RSA.value, 'token-key': b64(spki), 'not-before': notBefore }],
      }))
    }
    if (req.method === 'GET' && url.pathname === '/stats') {
      return send(200, 'application/json', JSON.stringify({ issued }))
    }
    if (url.pathname !== '/token-request') return fail(404, 'not found')
    if (req.method !== 'POST') return fail(405, 'POST a token request')
    if ((req.headers['content-type'] || '').split(';')[0].trim() !== MediaType.PRIVATE_TOKEN_REQUEST) {
      return fail(415, `send a ${MediaType.PRIVATE_TOKEN_REQUEST} body`)
    }
    const chunks = []
    req.on('data', (c) => chunks.push(c))
    req.on('end', async () => {
      try {
        const body = new Uint8Array(Buffer.concat(chunks))
        if (body.length !== 3 + BLIND_RSA.Nk) throw new Error(`a token request is ${3 + BLIND_RSA.Nk} bytes`)
        const tokenRequest = TokenRequest.deserialize(BLIND_RSA, body)
        if (tokenRequest.truncatedTokenKeyId !== keyId[keyId.length - 1]) {
          return fail(400, 'the token request is for another token key')
        }
        const response = await issuer.issue(tokenRequest)
        issued++
        send(200, MediaType.PRIVATE_TOKEN_RESPONSE, Buffer.from(response.serialize()))
      } catch (err) {
        fail(400, err.message)
      }
    })
  })
  await new Promise((resolve, reject) => {
    server.once('error', reject)
    server.listen(port, host, resolve)
  })
  const actual = server.address().port
  process.stdout.write(`token-key ${b64(spki)}\ntoken-key-id ${hex(keyId)}\nready ${actual}\n`)
  const stop = () => server.close(() => process.exit(0))
  process.on('SIGTERM', stop)
  process.on('SIGINT', stop)
  return null // keeps running
}

// ---------------------------------------------------------------- verify / keyinfo / mint

async function runVerify(args) {
  const spki = unb64(need(args, 'token-key'), '--token-key')
  const tokenBytes = unb64(need(args, 'token'), '--token')
  const challengeBytes = unb64(need(args, 'challenge'), '--challenge')
  const result = { valid: false }
  const expected = 2 + 32 + 32 + BLIND_RSA.Nid + BLIND_RSA.Nk
  if (tokenBytes.length !== expected) {
    result.reason = `a type 2 token is ${expected} bytes, this one is ${tokenBytes.length}`
  } else {
    const token = Token.deserialize(BLIND_RSA, tokenBytes)
    const challenge = TokenChallenge.deserialize(challengeBytes)
    const reserialized = challenge.serialize()
    const input = token.authInput
    if (hex(reserialized) !== hex(challengeBytes)) {
      result.reason = 'the library re-encodes the challenge differently'
    } else if (input.tokenType !== BLIND_RSA.value || challenge.tokenType !== BLIND_RSA.value) {
      result.reason = 'not a Blind RSA token or challenge'
    } else if (hex(input.challengeDigest) !== hex(await sha256(challengeBytes))) {
      result.reason = 'the token answers another challenge'
    } else if (hex(input.tokenKeyId) !== hex(await sha256(spki))) {
      result.reason = 'the token was issued under another token key'
    } else {
      const origin = new Origin(BlindRSAMode.PSS)
      result.valid = await origin.verify(token, await importTokenKey(spki))
      if (!result.valid) result.reason = 'the signature does not verify'
    }
  }
  process.stdout.write(JSON.stringify(result) + '\n')
  return result.valid ? 0 : 1
}

async function runKeyinfo(args) {
  const publicKey = await importTokenKey(unb64(need(args, 'token-key'), '--token-key'))
  const spki = await getPublicKeyBytes(publicKey)
  // The library computes token_key_id on its Issuer; the private key is not needed for that.
  const keyId = await new Issuer(BlindRSAMode.PSS, 'keyinfo', undefined, publicKey).tokenKeyID()
  process.stdout.write(JSON.stringify({ tokenKey: b64(spki), tokenKeyId: hex(keyId) }) + '\n')
  return 0
}

async function runMint(args) {
  const challenge = TokenChallenge.deserialize(unb64(need(args, 'challenge'), '--challenge'))
  const issuer = await makeIssuer(args, challenge.issuerName)
  const spki = await getPublicKeyBytes(issuer.publicKey)
  const client = new Client(BlindRSAMode.PSS)
  const request = await client.createTokenRequest(challenge, spki)
  const response = await issuer.issue(TokenRequest.deserialize(BLIND_RSA, request.serialize()))
  const token = await client.finalize(client.deserializeTokenResponse(response.serialize()))
  process.stdout.write(JSON.stringify({
    tokenKey: b64(spki),
    tokenRequest: b64(request.serialize()),
    tokenResponse: b64(response.serialize()),
    token: b64(token.serialize()),
    authorization: new AuthorizationHeader(token).toString(),
    verified: await issuer.verify(token),
  }) + '\n')
  return 0
}

// ---------------------------------------------------------------- main

const MODES = { client: runClient, issuer: runIssuer, verify: runVerify, keyinfo: runKeyinfo, mint: runMint }

async function main() {
  const [mode, ...rest] = process.argv.slice(2)
  if (!MODES[mode]) throw new UsageError(mode ? `unknown mode ${JSON.stringify(mode)}` : 'no mode given')
  const code = await MODES[mode](parseArgs(rest))
  if (code !== null) process.exitCode = code
}

main().catch((err) => {
  if (err instanceof UsageError) {
    process.stderr.write(`${err.message}\n${USAGE}\n`)
    process.exitCode = 64
  } else {
    process.stderr.write(`error: ${err.stack || err.message}\n`)
    process.stdout.write(JSON.stringify({ error: err.message }) + '\n')
    process.exitCode = 1
  }
})
