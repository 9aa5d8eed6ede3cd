import { describe, expect, it, vi } from 'vitest'
import { Pager, type Page } from './paging'

function deferred<T>() {
  let resolve!: (v: T) => void
  let reject!: (e: unknown) => void
  const promise = new Promise<T>((ok, fail) => {
    resolve = ok
    reject = fail
  })
  return { promise, resolve, reject }
}

describe('Pager (infinite scroll)', () => {
  it('follows next_cursor until it is null, then stops asking', async () => {
    const pages: Record<string, Page<number>> = {
      start: { items: [1, 2], next_cursor: 'c2' },
      c2: { items: [3, 4], next_cursor: 'c3' },
      c3: { items: [5], next_cursor: null },
    }
    const fetcher = vi.fn(async (cursor: string | null) => pages[cursor ?? 'start'])
    const pager = new Pager(fetcher)
    await pager.reset()
    expect(pager.state).toMatchObject({ items: [1, 2], done: false, loaded: true })
    await pager.loadMore()
    await pager.loadMore()
    expect(pager.state).toMatchObject({ items: [1, 2, 3, 4, 5], done: true })
    await pager.loadMore()
    expect(fetcher.mock.calls.map((c) => c[0])).toEqual([null, 'c2', 'c3'])
  })

  it('asks for one page at a time even when scrolled repeatedly', async () => {
    const first = deferred<Page<number>>()
    const fetcher = vi.fn(() => first.promise)
    const pager = new Pager(fetcher)
    const a = pager.loadMore()
    const b = pager.loadMore()
    expect(fetcher).toHaveBeenCalledTimes(1)
    expect(pager.state.loading).toBe(true)
    first.resolve({ items: [1], next_cursor: null })
    await Promise.all([a, b])
    expect(pager.state).toMatchObject({ items: [1], loading: false, done: true })
  })

  it('drops answers to requests made before a reset (another class chosen meanwhile)', async () => {
    const slow = deferred<Page<string>>()
    const pager = new Pager<string>(() => slow.promise)
    const old = pager.loadMore()
    const reset = pager.reset(async () => ({ items: ['new'], next_cursor: null }))
    slow.resolve({ items: ['old'], next_cursor: 'x' })
    await Promise.all([old, reset])
    expect(pager.state.items).toEqual(['new'])
    expect(pager.state.done).toBe(true)
  })

  it('keeps loaded items on an error and can try again', async () => {
    let fail = true
    const pager = new Pager<number>(
      async (cursor) => {
        if (cursor && fail) throw new Error('Server unavailable')
        return cursor ? { items: [2], next_cursor: null } : { items: [1], next_cursor: 'n' }
      },
      undefined,
      (err) => `Oops: ${(err as Error).message}`,
    )
    await pager.reset()
    await pager.loadMore()
    expect(pager.state).toMatchObject({ items: [1], error: 'Oops: Server unavailable', done: false })
    fail = false
    await pager.loadMore()
    expect(pager.state).toMatchObject({ items: [1, 2], error: null, done: true })
  })

  it('updates loaded items in place after a move or delete', async () => {
    const changes: number[][] = []
    const pager = new Pager<number>(async () => ({ items: [1, 2, 3] }), (s) => changes.push(s.items))
    await pager.reset()
    pager.update((items) => items.filter((i) => i !== 2))
    expect(pager.state.items).toEqual([1, 3])
    expect(changes[changes.length - 1]).toEqual([1, 3])
  })
})
