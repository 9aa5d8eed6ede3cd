import { describe, expect, it } from 'vitest'
import { cautionCurve, cautionSentence, pointAt, polyline } from './caution'

const metrics = {
  caution_curve: [
    { caution: 0.05, answered: 0.95, right_when_answered: 0.9, right_overall: 0.855 },
    { caution: 0, answered: 1, right_when_answered: 0.85, right_overall: 0.85 },
    { caution: 0.5, answered: 0.5, right_when_answered: 1, right_overall: 0.5 },
    { caution: 'x' },
  ],
}

describe('caution', () => {
  it('reads the measured curve, sorted, skipping malformed points', () => {
    const curve = cautionCurve(metrics)
    expect(curve.map((p) => p.caution)).toEqual([0, 0.05, 0.5])
    expect(cautionCurve({})).toEqual([])
  })
  it('finds the nearest point and says it in words', () => {
    const p = pointAt(cautionCurve(metrics), 0.06)!
    expect(p.caution).toBe(0.05)
    expect(cautionSentence(p)).toBe('Out of 100 ordinary images it answers 95 and is right on about 86 of those; it says “unknown” for the other 5.')
  })
  it('draws the curve across the box', () => {
    expect(polyline(cautionCurve(metrics), (p) => p.answered, 100, 50)).toBe('0.0,0.0 10.0,2.5 100.0,25.0')
  })
})
