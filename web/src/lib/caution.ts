// "Unknown" in plain words: what a version does at each caution (the share of ordinary images it refuses).

export interface CautionPoint {
  caution: number
  answered: number
  rightWhenAnswered: number
  rightOverall: number
}

function num(value: unknown): number | null {
  return typeof value === 'number' && Number.isFinite(value) ? value : null
}

/** The measured curve of a version's metrics (test images), or [] for versions made before cautions existed. */
export function cautionCurve(metrics: Record<string, unknown> | null | undefined): CautionPoint[] {
  const raw = metrics?.caution_curve
  if (!Array.isArray(raw)) return []
  const out: CautionPoint[] = []
  for (const entry of raw) {
    const e = entry as Record<string, unknown>
    const caution = num(e.caution)
    const answered = num(e.answered)
    const right = num(e.right_when_answered)
    const overall = num(e.right_overall)
    if (caution === null || answered === null || right === null || overall === null) continue
    out.push({ caution, answered, rightWhenAnswered: right, rightOverall: overall })
  }
  return out.sort((a, b) => a.caution - b.caution)
}

/** The curve's point at a caution (the nearest measured one). */
export function pointAt(curve: CautionPoint[], caution: number): CautionPoint | null {
  let best: CautionPoint | null = null
  for (const p of curve) if (!best || Math.abs(p.caution - caution) < Math.abs(best.caution - caution)) best = p
  return best
}

/** "Answers 95 of 100 images and is right on 88 of those 95." */
export function cautionSentence(p: CautionPoint): string {
  const answered = Math.round(p.answered * 100)
  const right = Math.round(p.rightWhenAnswered * answered)
  if (answered === 0) return 'Answers “unknown” for every image.'
  return `Out of 100 ordinary images it answers ${answered} and is right on about ${right} of those; it says “unknown” for the other ${100 - answered}.`
}

/** SVG polyline points for a 0-1 series over cautions 0-0.5, in a width x height box. */
export function polyline(curve: CautionPoint[], pick: (p: CautionPoint) => number, width: number, height: number): string {
  const last = curve.length ? Math.max(curve[curve.length - 1].caution, 0.01) : 0.5
  return curve.map((p) => `${((p.caution / last) * width).toFixed(1)},${((1 - pick(p)) * height).toFixed(1)}`).join(' ')
}
