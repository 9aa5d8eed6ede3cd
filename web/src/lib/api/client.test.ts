import { readFile } from 'node:fs/promises'
import { describe, expect, it, vi } from 'vitest'
import { generate, hoistDefs, OUTPUT } from '../../../scripts/generate-client.mjs'
import { ApiError, call, csrfHeaders, makeClient, readCookie, setUnauthenticatedHandler, toApiError } from './http'

describe('the generated client', () => {
  it('matches openapi.json (run `make web-client` when this fails)', async () => {
    const committed = await readFile(OUTPUT, 'utf8')
    expect(committed === (await generate()), 'schema.d.ts is stale: run `make web-client`').toBe(true)
  })

  it('moves nested $defs of hand-embedded schemas into components', () => {
    const spec = hoistDefs({
      paths: { '/p': { post: { requestBody: { content: { 'application/json': { schema: {
        $defs: { Img: { type: 'object' } },
        properties: { images: { items: { $ref: '#/$defs/Img' } } },
      } } } } } } },
    })
    const schema = spec.paths['/p'].post.requestBody.content['application/json'].schema
    expect(schema.$defs).toBeUndefined()
    expect(schema.properties.images.items.$ref).toBe('#/components/schemas/Img')
    expect(spec.components.schemas.Img).toEqual({ type: 'object' })
  })
})

describe('cookies and the CSRF header', () => {
  it('reads one cookie among several', () => {
    expect(readCookie('a=1; pgh_csrf=abc%3D; b=2', 'pgh_csrf')).toBe('abc=')
    expect(readCookie('xpgh_csrf=no', 'pgh_csrf')).toBeNull()
    expect(readCookie('', 'pgh_csrf')).toBeNull()
  })

  it('sends the token on state-changing requests only', () => {
    expect(csrfHeaders('POST', 'pgh_csrf=t1')).toEqual({ 'X-CSRF-Token': 't1' })
    expect(csrfHeaders('delete', 'pgh_csrf=t1')).toEqual({ 'X-CSRF-Token': 't1' })
    expect(csrfHeaders('GET', 'pgh_csrf=t1')).toEqual({})
    expect(csrfHeaders('POST', 'other=1')).toEqual({})
  })

  it('adds the header through the client and keeps the cookie credentials', async () => {
    const seen: Request[] = []
    const fakeFetch = vi.fn(async (request: Request) => {
      seen.push(request)
      return new Response(JSON.stringify({ id: 't', name: 'n' }), { status: 201, headers: { 'content-type': 'application/json' } })
    })
    const client = makeClient({ baseUrl: 'http://pigeonhole.test', fetch: fakeFetch as unknown as typeof fetch, cookies: () => 'pgh_csrf=secret-1' })
    await client.POST('/api/v1/tokens', { body: { name: 'script' } })
    await client.GET('/api/v1/tokens')
    expect(seen[0].headers.get('X-CSRF-Token')).toBe('secret-1')
    expect(seen[0].credentials).toBe('same-origin')
    expect(seen[1].headers.get('X-CSRF-Token')).toBeNull()
  })

  it('reports a lost session (401 outside /auth) so the app can ask to sign in again', async () => {
    const lost = vi.fn()
    setUnauthenticatedHandler(lost)
    const respond = (status: number) =>
      (async () => new Response(JSON.stringify({ detail: 'Sign in.', code: 'not_authenticated' }), { status })) as unknown as typeof fetch
    const client = makeClient({ baseUrl: 'http://pigeonhole.test', fetch: respond(401) })
    await expect(call(client.GET('/api/v1/me'))).rejects.toThrow('Sign in.')
    expect(lost).toHaveBeenCalledTimes(1)
    // A wrong password at sign-in is not a lost session.
    await expect(call(client.POST('/api/v1/auth/login', { body: { email: 'a@b.c', password: 'x' } }))).rejects.toThrow()
    expect(lost).toHaveBeenCalledTimes(1)
  })
})

describe('errors', () => {
  it('shows the API sentence', () => {
    const err = toApiError(409, { detail: 'A dataset with this name already exists.', code: 'duplicate' })
    expect(err).toBeInstanceOf(ApiError)
    expect(err.message).toBe('A dataset with this name already exists.')
    expect(err.code).toBe('duplicate')
    expect(err.status).toBe(409)
  })

  it('falls back to a readable sentence without a body', () => {
    expect(toApiError(502, null).message).toMatch(/went wrong on the server/)
    expect(toApiError(0, null).message).toMatch(/Could not reach/)
    expect(toApiError(418, 'teapot').message).toBe('The request failed (status 418).')
  })

  it('turns a network failure into an ApiError', async () => {
    await expect(call(Promise.reject(new TypeError('Failed to fetch')))).rejects.toMatchObject({ status: 0 })
  })
})
