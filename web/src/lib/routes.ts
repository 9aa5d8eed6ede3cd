// The app's pages and how URLs map to them (pure, so it is unit-tested).

export type Route =
  | { page: 'signin' }
  | { page: 'signup' }
  | { page: 'home' }
  | { page: 'models' }
  | { page: 'newmodel' }
  | { page: 'model'; id: string; tab: ModelTab }
  | { page: 'datasets' }
  | { page: 'dataset'; id: string }
  | { page: 'review'; id: string }
  | { page: 'label'; id: string }
  | { page: 'tokens' }
  | { page: 'usage' }
  | { page: 'admin' }
  | { page: 'notfound' }

export const MODEL_TABS = ['overview', 'try', 'grow', 'versions', 'api'] as const
export type ModelTab = (typeof MODEL_TABS)[number]

export const PUBLIC_PAGES = new Set<Route['page']>(['signin', 'signup'])

export function matchRoute(pathname: string): Route {
  const path = pathname.replace(/\/+$/, '') || '/'
  const parts = path.split('/').filter(Boolean).map(decodeURIComponent)
  if (parts.length === 0) return { page: 'home' }
  const [first, second] = parts
  if (parts.length === 1) {
    switch (first) {
      case 'signin':
        return { page: 'signin' }
      case 'signup':
        return { page: 'signup' }
      case 'models':
        return { page: 'models' }
      case 'datasets':
        return { page: 'datasets' }
      case 'tokens':
        return { page: 'tokens' }
      case 'usage':
        return { page: 'usage' }
      case 'admin':
        return { page: 'admin' }
    }
  }
  if (parts.length === 2 && first === 'datasets') return { page: 'dataset', id: second }
  if (parts.length === 3 && first === 'datasets' && parts[2] === 'review') return { page: 'review', id: second }
  if (parts.length === 3 && first === 'datasets' && parts[2] === 'label') return { page: 'label', id: second }
  if (parts.length === 2 && first === 'models') return second === 'new' ? { page: 'newmodel' } : { page: 'model', id: second, tab: 'overview' }
  if (parts.length === 3 && first === 'models' && (MODEL_TABS as readonly string[]).includes(parts[2]) && parts[2] !== 'overview') {
    return { page: 'model', id: second, tab: parts[2] as ModelTab }
  }
  return { page: 'notfound' }
}

/** Only same-site app paths may be a "next" after sign-in (never another origin or the API). */
export function safeNext(next: string | null | undefined): string {
  if (!next || !next.startsWith('/') || next.startsWith('//') || next.startsWith('/api/')) return '/'
  if (next.startsWith('/signin') || next.startsWith('/signup')) return '/'
  return next
}
