// A tiny history-API router: `router.route` is reactive; links are plain <a href> (clicks are intercepted).
import { matchRoute, type Route } from './routes'

class Router {
  path = $state(location.pathname)
  search = $state(location.search)
  route: Route = $derived(matchRoute(this.path))

  constructor() {
    window.addEventListener('popstate', () => this.sync())
    document.addEventListener('click', (event) => this.intercept(event))
  }

  navigate(to: string, options: { replace?: boolean } = {}): void {
    const url = new URL(to, location.origin)
    if (url.pathname + url.search === location.pathname + location.search) return
    if (options.replace) history.replaceState(null, '', url)
    else history.pushState(null, '', url)
    this.sync()
    window.scrollTo(0, 0)
  }

  private sync(): void {
    this.path = location.pathname
    this.search = location.search
  }

  private intercept(event: MouseEvent): void {
    if (event.defaultPrevented || event.button !== 0 || event.metaKey || event.ctrlKey || event.shiftKey || event.altKey) {
      return
    }
    const anchor = (event.target as Element | null)?.closest?.('a')
    if (!anchor || anchor.hasAttribute('download') || anchor.target || anchor.hasAttribute('data-external')) return
    const url = new URL(anchor.href, location.href)
    if (url.origin !== location.origin || url.pathname.startsWith('/api/') || url.pathname === '/docs') return
    if (url.hash && url.pathname === location.pathname && url.search === location.search) return // in-page link
    event.preventDefault()
    this.navigate(url.pathname + url.search + url.hash)
  }
}

export const router = new Router()
