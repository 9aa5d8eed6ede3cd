// Turning the usage API's sparse per-day figures into a chart: every day present, sensible axis ticks.

export interface DayFigures {
  key: string | null
  calls: number
  errors: number
}

export interface ChartDay {
  day: string
  calls: number
  errors: number
}

export function isoDay(date: Date): string {
  return date.toISOString().slice(0, 10)
}

/** Days from `from` to `to` (inclusive, "YYYY-MM-DD", UTC), with zeros for days without calls. */
export function fillDays(from: string, to: string, items: DayFigures[]): ChartDay[] {
  const byDay = new Map(items.filter((i) => i.key).map((i) => [i.key as string, i]))
  const days: ChartDay[] = []
  const end = new Date(`${to}T00:00:00Z`)
  for (let d = new Date(`${from}T00:00:00Z`); d <= end && days.length < 400; d.setUTCDate(d.getUTCDate() + 1)) {
    const key = isoDay(d)
    const found = byDay.get(key)
    days.push({ day: key, calls: found?.calls ?? 0, errors: found?.errors ?? 0 })
  }
  return days
}

/** A round maximum for the y axis and ticks, e.g. 37 → 40 with ticks 0, 10, 20, 30, 40. */
export function niceScale(max: number, tickCount = 4): { max: number; ticks: number[] } {
  if (!(max > 0)) return { max: 1, ticks: [0, 1] }
  const rough = max / tickCount
  const magnitude = 10 ** Math.floor(Math.log10(rough))
  const step = [1, 2, 2.5, 5, 10].map((m) => m * magnitude).find((s) => s >= rough) ?? 10 * magnitude
  const wholeStep = Math.max(1, Math.ceil(step))
  const top = Math.ceil(max / wholeStep) * wholeStep
  const ticks: number[] = []
  for (let t = 0; t <= top; t += wholeStep) ticks.push(t)
  return { max: top, ticks }
}

/** The range of the last `days` days ending today (UTC). */
export function lastDays(days: number, today: Date = new Date()): { from: string; to: string } {
  const start = new Date(Date.UTC(today.getUTCFullYear(), today.getUTCMonth(), today.getUTCDate()))
  start.setUTCDate(start.getUTCDate() - (days - 1))
  return { from: isoDay(start), to: isoDay(today) }
}

export function errorRate(calls: number, errors: number): number {
  return calls > 0 ? errors / calls : 0
}
