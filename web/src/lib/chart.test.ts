import { describe, expect, it } from 'vitest'
import { clock, pathOf, scaleCurves, series } from './chart'

const box = { width: 300, height: 120, pad: { top: 10, right: 10, bottom: 10, left: 10 } }

describe('accuracy curve', () => {
  it('takes one metric from the latest attempt, in time order', () => {
    const history = [
      { t: 5, attempt: 1, best_val_accuracy: 0.5 },
      { t: 9, attempt: 2, best_val_accuracy: 0.8 },
      { t: 3, attempt: 2, best_val_accuracy: 0.7, epoch_val_accuracy: 0.6 },
      { t: 12, attempt: 2, epoch: 1 },
      { t: 14, attempt: 2, best_val_accuracy: 1.2 },
    ]
    expect(series(history, 'best_val_accuracy')).toEqual([
      { t: 3, value: 0.7 },
      { t: 9, value: 0.8 },
      { t: 14, value: 1 },
    ])
    expect(series(history, 'epoch_val_accuracy')).toEqual([{ t: 3, value: 0.6 }])
    expect(series([], 'x')).toEqual([])
  })

  it('scales y from a round tenth below the lowest point to 100 %, and time to a round end', () => {
    const s = scaleCurves([[{ t: 0, value: 0.72 }, { t: 47, value: 0.9 }]], box)
    expect(s.yMin).toBe(0.6)
    expect(s.yTicks).toEqual([0.6, 0.7, 0.8, 0.9, 1])
    expect(s.tMax).toBe(50)
    expect(s.tTicks).toEqual([0, 10, 20, 30, 40, 50])
    expect(s.y(1)).toBe(10)
    expect(s.y(0.6)).toBe(110)
    expect(s.x(0)).toBe(10)
    expect(s.x(50)).toBe(290)
  })

  it('shows at least half a minute, and copes with no points or low accuracy', () => {
    const empty = scaleCurves([], box)
    expect(empty.tMax).toBe(30)
    const low = scaleCurves([[{ t: 400, value: 0.02 }]], box)
    expect(low.yMin).toBe(0)
    expect(low.yTicks).toEqual([0, 0.2, 0.4, 0.6, 0.8, 1])
    expect(low.tMax).toBe(480)
  })

  it('draws a step line for "best so far"', () => {
    const s = scaleCurves([[{ t: 0, value: 0.5 }, { t: 30, value: 1 }]], box)
    expect(pathOf([], s)).toBe('')
    expect(pathOf([{ t: 0, value: 0.5 }, { t: 30, value: 1 }], s, true)).toBe('M10.0,93.3H290.0V10.0')
    expect(pathOf([{ t: 0, value: 0.5 }, { t: 30, value: 1 }], s)).toBe('M10.0,93.3L290.0,10.0')
  })

  it('labels time like a clock', () => {
    expect(clock(0)).toBe('0:00')
    expect(clock(65)).toBe('1:05')
    expect(clock(3723)).toBe('1:02:03')
  })
})
