// Who is signed in. `session.user` is null when signed out; `session.checked` once we know.
import { api, call, setUnauthenticatedHandler, type Schemas } from './api/http'

export type Me = Schemas['Me']

class Session {
  user = $state<Me | null>(null)
  checked = $state(false)
  /** Set right after the first account is created, to welcome the new administrator. */
  justCreatedAdmin = $state(false)

  constructor() {
    setUnauthenticatedHandler(() => {
      this.user = null
    })
  }

  async refresh(): Promise<void> {
    try {
      const { data, response } = await api.GET('/api/v1/me')
      this.user = response.ok && data ? data : null
    } catch {
      this.user = null
    } finally {
      this.checked = true
    }
  }

  async signIn(email: string, password: string): Promise<void> {
    await call(api.POST('/api/v1/auth/login', { body: { email, password } }))
    await this.refresh()
  }

  async signUp(email: string, password: string): Promise<void> {
    const user = await call(api.POST('/api/v1/auth/signup', { body: { email, password } }))
    this.justCreatedAdmin = user.is_admin
    await this.refresh()
  }

  async signOut(): Promise<void> {
    try {
      await call(api.POST('/api/v1/auth/logout'))
    } finally {
      this.user = null
      this.justCreatedAdmin = false
    }
  }
}

export const session = new Session()
