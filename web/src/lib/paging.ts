// Cursor paging for lists that grow as you scroll ("infinite scroll"): one request at a time, stops at the end,
// and a reset (another filter) makes answers to older requests harmless.

export interface Page<T> {
  items: T[]
  next_cursor?: string | null
}

export type Fetcher<T> = (cursor: string | null) => Promise<Page<T>>

export interface PagerState<T> {
  items: T[]
  loading: boolean
  error: string | null
  /** No more pages. */
  done: boolean
  /** The first page has arrived (so an empty list really is empty). */
  loaded: boolean
}

export class Pager<T> {
  private fetcher: Fetcher<T>
  private cursor: string | null = null
  private generation = 0
  private inflight: Promise<void> | null = null
  state: PagerState<T> = { items: [], loading: false, error: null, done: false, loaded: false }
  private readonly onChange: (state: PagerState<T>) => void
  private readonly describe: (err: unknown) => string

  constructor(
    fetcher: Fetcher<T>,
    onChange: (state: PagerState<T>) => void = () => {},
    describe: (err: unknown) => string = (err) => (err instanceof Error ? err.message : String(err)),
  ) {
    this.fetcher = fetcher
    this.onChange = onChange
    this.describe = describe
  }

  /** Start again from the first page, possibly with another fetcher (another filter). */
  reset(fetcher?: Fetcher<T>): Promise<void> {
    if (fetcher) this.fetcher = fetcher
    this.generation++
    this.cursor = null
    this.inflight = null
    this.state = { items: [], loading: false, error: null, done: false, loaded: false }
    this.emit()
    return this.loadMore()
  }

  /** Fetch the next page, unless one is on its way or the end was reached (after an error it tries again). */
  loadMore(): Promise<void> {
    if (this.inflight) return this.inflight
    if (this.state.done) return Promise.resolve()
    const generation = this.generation
    this.state = { ...this.state, loading: true, error: null }
    this.emit()
    const pending = this.fetcher(this.cursor).then(
      (page) => {
        if (generation !== this.generation) return
        this.cursor = page.next_cursor ?? null
        this.state = {
          items: [...this.state.items, ...page.items],
          loading: false,
          error: null,
          done: !this.cursor,
          loaded: true,
        }
      },
      (err) => {
        if (generation !== this.generation) return
        this.state = { ...this.state, loading: false, error: this.describe(err) }
      },
    )
    const tracked = pending.finally(() => {
      if (generation === this.generation) {
        this.inflight = null
        this.emit()
      }
    })
    this.inflight = tracked
    return tracked
  }

  /** Change the loaded items in place (after a move or delete) without refetching. */
  update(change: (items: T[]) => T[]): void {
    this.state = { ...this.state, items: change(this.state.items) }
    this.emit()
  }

  private emit(): void {
    this.onChange(this.state)
  }
}
