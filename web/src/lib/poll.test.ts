import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest'
import { nextDelay, Poller } from './poll'

const flush = () => new Promise((r) => setImmediate(r))

describe('nextDelay', () => {
  it('is short after a change and grows while nothing changes, up to the maximum', () => {
    expect(nextDelay(4000, true, 1000, 10_000, 1.5)).toBe(1000)
    expect(nextDelay(1000, false, 1000, 10_000, 1.5)).toBe(1500)
    expect(nextDelay(8000, false, 1000, 10_000, 1.5)).toBe(10_000)
    expect(nextDelay(10, false, 1000, 10_000, 1.5)).toBe(1000)
  })
})

describe('Poller', () => {
  beforeEach(() => vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout'] }))
  afterEach(() => vi.useRealTimers())

  it('polls until done, backing off while the answer stays the same', async () => {
    const answers = [{ p: 0 }, { p: 0 }, { p: 0 }, { p: 0.5 }, { p: 1, done: true }]
    const fetch = vi.fn(async () => answers.shift()!)
    const seen: unknown[] = []
    const poller = new Poller({ fetch, onData: (d) => seen.push(d), done: (d) => !!(d as { done?: boolean }).done, minMs: 100, maxMs: 1000, factor: 2 })
    poller.start()
    await flush()
    expect(fetch).toHaveBeenCalledTimes(1)
    expect(poller.currentDelay).toBe(100) // the first answer is a change
    await vi.advanceTimersByTimeAsync(100)
    expect(poller.currentDelay).toBe(200) // same answer: wait longer
    await vi.advanceTimersByTimeAsync(200)
    expect(poller.currentDelay).toBe(400)
    await vi.advanceTimersByTimeAsync(400)
    expect(poller.currentDelay).toBe(100) // changed: quick again
    await vi.advanceTimersByTimeAsync(100)
    expect(fetch).toHaveBeenCalledTimes(5)
    expect(poller.running).toBe(false)
    await vi.advanceTimersByTimeAsync(10_000)
    expect(fetch).toHaveBeenCalledTimes(5) // stopped by itself
    expect(seen).toHaveLength(5)
  })

  it('backs off on errors and keeps going', async () => {
    let fail = 2
    const errors: unknown[] = []
    const fetch = vi.fn(async () => {
      if (fail-- > 0) throw new Error('down')
      return { ok: true }
    })
    const poller = new Poller({ fetch, onData: () => {}, onError: (e) => errors.push(e), done: () => true, minMs: 100, maxMs: 1000 })
    poller.start()
    await flush()
    expect(poller.currentDelay).toBe(200)
    await vi.advanceTimersByTimeAsync(200)
    expect(poller.currentDelay).toBe(400)
    await vi.advanceTimersByTimeAsync(400)
    expect(errors).toHaveLength(2)
    expect(fetch).toHaveBeenCalledTimes(3)
    expect(poller.running).toBe(false)
  })

  it('ignores an answer that arrives after stop, and poke polls at once', async () => {
    let resolve: (v: number) => void = () => {}
    const fetch = vi.fn(() => new Promise<number>((r) => (resolve = r)))
    const onData = vi.fn()
    const poller = new Poller({ fetch, onData, done: () => false, minMs: 100 })
    poller.start()
    poller.stop()
    resolve(1)
    await flush()
    expect(onData).not.toHaveBeenCalled()
    await vi.advanceTimersByTimeAsync(1000)
    expect(fetch).toHaveBeenCalledTimes(1)

    const quick = vi.fn(async () => 1)
    const other = new Poller({ fetch: quick, onData, done: () => false, minMs: 100, maxMs: 5000, factor: 3 })
    other.start()
    await flush()
    await vi.advanceTimersByTimeAsync(100)
    expect(other.currentDelay).toBe(300)
    other.poke()
    await flush()
    expect(quick).toHaveBeenCalledTimes(3)
    other.stop()
  })
})
