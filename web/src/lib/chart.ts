// The live accuracy curve: points from a job's metric history, scaled into an SVG box.

export interface CurvePoint {
  /** Seconds since the job started. */
  t: number
  /** Accuracy 0–1. */
  value: number
}

/**
 * One series from a job's metric history (`[{t, attempt, best_val_accuracy, …}]`): points with a number
 * for `key`, in time order, only from the latest attempt (a retried job starts its clock again).
 */
export function series(history: Record<string, unknown>[], key: string): CurvePoint[] {
  const attempts = history.map((m) => (typeof m.attempt === 'number' ? m.attempt : 1))
  const latest = attempts.length ? Math.max(...attempts) : 1
  return history
    .filter((m, i) => attempts[i] === latest && typeof m.t === 'number' && typeof m[key] === 'number' && Number.isFinite(m[key]))
    .map((m) => ({ t: m.t as number, value: Math.min(1, Math.max(0, m[key] as number)) }))
    .sort((a, b) => a.t - b.t)
}

export interface Box {
  width: number
  height: number
  pad: { top: number; right: number; bottom: number; left: number }
}

export interface Scaled {
  x: (t: number) => number
  y: (v: number) => number
  yMin: number
  tMax: number
  yTicks: number[]
  tTicks: number[]
}

const TIME_STEPS = [5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200]

/**
 * Axes for accuracy curves: y from a round tenth below the lowest value (never below 0) to 100 %,
 * x from 0 to a round time at or after the last point (at least `minSeconds`).
 */
export function scaleCurves(all: CurvePoint[][], box: Box, minSeconds = 30): Scaled {
  const points = all.flat()
  const lowest = points.length ? Math.min(...points.map((p) => p.value)) : 0.5
  const yMin = Math.max(0, Math.floor((lowest - 0.05) * 10) / 10)
  const last = points.length ? Math.max(...points.map((p) => p.t)) : 0
  const wanted = Math.max(minSeconds, last)
  const step = TIME_STEPS.find((s) => wanted / s <= 6) ?? Math.ceil(wanted / 6 / 3600) * 3600
  const tMax = Math.ceil(wanted / step) * step
  const innerW = box.width - box.pad.left - box.pad.right
  const innerH = box.height - box.pad.top - box.pad.bottom
  const span = 1 - yMin || 1
  const yStep = span > 0.5 ? 0.2 : span > 0.2 ? 0.1 : 0.05
  const yTicks: number[] = []
  for (let v = 1; v >= yMin - 1e-9; v -= yStep) yTicks.push(Math.round(v * 100) / 100)
  const tTicks: number[] = []
  for (let t = 0; t <= tMax + 1e-9; t += step) tTicks.push(t)
  return {
    x: (t) => box.pad.left + (t / tMax) * innerW,
    y: (v) => box.pad.top + (1 - (v - yMin) / span) * innerH,
    yMin,
    tMax,
    yTicks: yTicks.reverse(),
    tTicks,
  }
}

/** An SVG path through the points: a step line for "best so far", a straight one otherwise. */
export function pathOf(points: CurvePoint[], s: Scaled, step = false): string {
  if (points.length === 0) return ''
  let d = `M${s.x(points[0].t).toFixed(1)},${s.y(points[0].value).toFixed(1)}`
  for (let i = 1; i < points.length; i++) {
    const x = s.x(points[i].t).toFixed(1)
    const y = s.y(points[i].value).toFixed(1)
    d += step ? `H${x}V${y}` : `L${x},${y}`
  }
  return d
}

/** "0:45", "2:05", "1:02:03" for an axis label. */
export function clock(seconds: number): string {
  const s = Math.max(0, Math.round(seconds))
  const h = Math.floor(s / 3600)
  const m = Math.floor((s % 3600) / 60)
  const sec = String(s % 60).padStart(2, '0')
  return h ? `${h}:${String(m).padStart(2, '0')}:${sec}` : `${m}:${sec}`
}
