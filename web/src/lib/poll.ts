// Polling a resource until it is finished (a job, a training model): quick while things change, slower
// while nothing does or the server errs (exponential back-off), and it stops by itself when done.
// Pure logic with injectable timers, so it is unit-tested with fake ones.

export interface PollOptions<T> {
  /** Fetch the current state. */
  fetch: () => Promise<T>
  /** Called with every answer (changed or not). */
  onData: (data: T) => void
  /** Called with every failed fetch; polling goes on, more slowly. */
  onError?: (err: unknown) => void
  /** True when the thing polled is finished: polling stops after delivering it. */
  done: (data: T) => boolean
  /** Equal answers make the next wait longer; a change makes it short again. Default: same JSON. */
  same?: (a: T, b: T) => boolean
  /** First and shortest wait between answers (ms). */
  minMs?: number
  /** Longest wait (ms). */
  maxMs?: number
  /** How much longer each wait gets while nothing changes. */
  factor?: number
  setTimer?: (fn: () => void, ms: number) => unknown
  clearTimer?: (handle: unknown) => void
}

const sameJson = (a: unknown, b: unknown) => JSON.stringify(a) === JSON.stringify(b)

/** The next wait: back to `min` after a change, else `factor` times longer, never above `max`. */
export function nextDelay(current: number, changed: boolean, min: number, max: number, factor: number): number {
  if (changed) return min
  return Math.min(max, Math.max(min, Math.round(current * factor)))
}

export class Poller<T> {
  private readonly o: Required<Omit<PollOptions<T>, 'onError'>> & Pick<PollOptions<T>, 'onError'>
  private timer: unknown = null
  private delay: number
  private last: { value: T } | null = null
  private active = false
  private inflight = false
  private generation = 0

  constructor(options: PollOptions<T>) {
    this.o = {
      same: sameJson,
      minMs: 1000,
      maxMs: 10_000,
      factor: 1.5,
      setTimer: (fn, ms) => setTimeout(fn, ms),
      clearTimer: (h) => clearTimeout(h as ReturnType<typeof setTimeout>),
      ...options,
    }
    this.delay = this.o.minMs
  }

  get running(): boolean {
    return this.active
  }

  /** The current wait between polls (ms), for tests and "checking again in…" hints. */
  get currentDelay(): number {
    return this.delay
  }

  /** Start polling now (no-op when already polling). */
  start(): void {
    if (this.active) return
    this.active = true
    this.delay = this.o.minMs
    this.generation++
    void this.tick(this.generation)
  }

  /** Stop; an answer already on its way is ignored. */
  stop(): void {
    this.active = false
    this.generation++
    if (this.timer !== null) this.o.clearTimer(this.timer)
    this.timer = null
  }

  /** Poll again right away (after the user did something that changes the state), with short waits. */
  poke(): void {
    if (!this.active) return this.start()
    if (this.inflight) {
      this.delay = this.o.minMs
      return
    }
    if (this.timer !== null) this.o.clearTimer(this.timer)
    this.timer = null
    this.delay = this.o.minMs
    void this.tick(this.generation)
  }

  private async tick(generation: number): Promise<void> {
    this.timer = null
    this.inflight = true
    let finished = false
    try {
      const value = await this.o.fetch()
      if (generation !== this.generation) return
      const changed = this.last === null || !this.o.same(this.last.value, value)
      this.last = { value }
      this.delay = nextDelay(this.delay, changed, this.o.minMs, this.o.maxMs, this.o.factor)
      this.o.onData(value)
      finished = this.o.done(value)
    } catch (err) {
      if (generation !== this.generation) return
      this.delay = Math.min(this.o.maxMs, this.delay * 2)
      this.o.onError?.(err)
    } finally {
      if (generation === this.generation) this.inflight = false
    }
    if (generation !== this.generation) return
    if (finished) {
      this.active = false
      return
    }
    if (this.active) this.timer = this.o.setTimer(() => void this.tick(generation), this.delay)
  }
}
