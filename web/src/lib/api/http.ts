// The one place that knows how the browser talks to the API: session cookie, CSRF header, error shape.
import createClient, { type Middleware } from 'openapi-fetch'
import type { paths, components } from './schema'

export type Schemas = components['schemas']

export const CSRF_COOKIE = 'pgh_csrf'
export const CSRF_HEADER = 'X-CSRF-Token'
const SAFE_METHODS = new Set(['GET', 'HEAD', 'OPTIONS'])

/** The value of one cookie from a `document.cookie` string, or null. */
export function readCookie(cookies: string, name: string): string | null {
  for (const part of cookies.split(';')) {
    const eq = part.indexOf('=')
    if (eq < 0) continue
    if (part.slice(0, eq).trim() === name) return decodeURIComponent(part.slice(eq + 1).trim())
  }
  return null
}

/** Headers a request needs: the CSRF token on every state-changing request. */
export function csrfHeaders(method: string, cookies: string): Record<string, string> {
  if (SAFE_METHODS.has(method.toUpperCase())) return {}
  const token = readCookie(cookies, CSRF_COOKIE)
  return token ? { [CSRF_HEADER]: token } : {}
}

/** An API error with the server's sentence (`detail`) ready to show to the user. */
export class ApiError extends Error {
  status: number
  code: string
  constructor(status: number, detail: string, code: string) {
    super(detail)
    this.name = 'ApiError'
    this.status = status
    this.code = code
  }
}

const FALLBACK: Record<number, string> = {
  0: 'Could not reach the Pigeonhole server. Check your connection and try again.',
  413: 'That is too large for the server to accept.',
  429: 'Too many requests. Wait a moment and try again.',
  500: 'Something went wrong on the server. Try again; if it keeps happening, tell the administrator.',
}

/** Turn any error body (or none) into an ApiError with a readable sentence. */
export function toApiError(status: number, body: unknown): ApiError {
  if (body && typeof body === 'object' && 'detail' in body) {
    const { detail, code } = body as { detail: unknown; code?: unknown }
    if (typeof detail === 'string' && detail) {
      return new ApiError(status, detail, typeof code === 'string' ? code : 'error')
    }
  }
  const sentence = FALLBACK[status] ?? (status >= 500 ? FALLBACK[500] : `The request failed (status ${status}).`)
  return new ApiError(status, sentence, 'error')
}

/** Called when the server says the session is gone (401), so the app can show the sign-in page. */
let onUnauthenticated: () => void = () => {}
export function setUnauthenticatedHandler(handler: () => void): void {
  onUnauthenticated = handler
}

export function cookieSource(): string {
  return typeof document === 'undefined' ? '' : document.cookie
}

export function csrfMiddleware(cookies: () => string = cookieSource): Middleware {
  return {
    onRequest({ request }) {
      for (const [name, value] of Object.entries(csrfHeaders(request.method, cookies()))) {
        request.headers.set(name, value)
      }
      return request
    },
    onResponse({ response, request }) {
      if (response.status === 401 && !new URL(request.url).pathname.startsWith('/api/v1/auth/')) {
        onUnauthenticated()
      }
      return response
    },
  }
}

export function makeClient(options: { baseUrl?: string; fetch?: typeof fetch; cookies?: () => string } = {}) {
  const client = createClient<paths>({
    baseUrl: options.baseUrl ?? (typeof location === 'undefined' ? 'http://localhost' : location.origin),
    credentials: 'same-origin',
    fetch: options.fetch,
  })
  client.use(csrfMiddleware(options.cookies))
  return client
}

export const api = makeClient()

/** Unwrap an openapi-fetch result: the data, or throw an ApiError with the server's sentence. */
export async function call<T>(
  pending: Promise<{ data?: T; error?: unknown; response: Response }>,
): Promise<T> {
  let result: { data?: T; error?: unknown; response: Response }
  try {
    result = await pending
  } catch (err) {
    if (err instanceof ApiError) throw err
    throw toApiError(0, null)
  }
  if (!result.response.ok) throw toApiError(result.response.status, result.error)
  return result.data as T
}

/** A readable sentence for anything thrown. */
export function errorMessage(err: unknown): string {
  if (err instanceof ApiError) return err.message
  if (err instanceof Error && err.message) return err.message
  return 'Something went wrong. Try again.'
}
