import { describe, expect, it } from 'vitest'
import { cellColour, cellInk, mixUps, normalise, readConfusion, type Confusion } from './confusion'

const metrics = {
  confusion: {
    labels: ['ants', 'bees'],
    columns: ['ants', 'bees', 'unknown'],
    matrix: [
      [8, 1, 1],
      [0, 0, 0],
    ],
  },
}

describe('confusion matrix', () => {
  it('reads the metrics and refuses malformed ones', () => {
    expect(readConfusion(metrics)?.columns).toEqual(['ants', 'bees', 'unknown'])
    expect(readConfusion({})).toBeNull()
    expect(readConfusion(null)).toBeNull()
    expect(readConfusion({ confusion: { labels: ['a'], matrix: [[1, 2]] } })).toBeNull()
    expect(readConfusion({ confusion: { labels: ['a', 'b'], matrix: [[1, 2], [3, 4]] } })?.columns).toEqual(['a', 'b'])
  })

  it('reads the non-zero cells newer versions store, and refuses cells outside the grid', () => {
    const sparse = { labels: ['ants', 'bees'], columns: ['ants', 'bees', 'unknown'], cells: [[0, 0, 8], [0, 1, 1], [0, 2, 1]] }
    expect(readConfusion({ confusion: sparse })).toEqual(readConfusion(metrics))
    expect(readConfusion({ confusion: { ...sparse, cells: [[2, 0, 1]] } })).toBeNull()
    expect(readConfusion({ confusion: { ...sparse, cells: [[0, 0]] } })).toBeNull()
  })

  it('normalises each row to shares of the true class, empty rows to zero', () => {
    const cells = normalise(readConfusion(metrics)!)
    expect(cells[0].map((c) => c.share)).toEqual([0.8, 0.1, 0.1])
    expect(cells[0].map((c) => c.correct)).toEqual([true, false, false])
    expect(cells[1].map((c) => c.share)).toEqual([0, 0, 0])
    expect(cells[1][1].correct).toBe(true)
  })

  it('colours right answers green and mistakes red, stronger for larger shares', () => {
    expect(cellColour({ count: 0, share: 0, correct: false })).toBe('transparent')
    expect(cellColour({ count: 8, share: 0.8, correct: true })).toBe('rgb(15 122 74 / 0.74)')
    expect(cellColour({ count: 1, share: 0.1, correct: false })).toBe('rgb(192 38 62 / 0.20)')
    expect(cellInk({ count: 8, share: 0.8, correct: true })).toBe('#fff')
    expect(cellInk({ count: 1, share: 0.1, correct: false })).toBe('inherit')
  })

  it('lists the mix-ups, largest first', () => {
    const c = readConfusion({
      confusion: { labels: ['a', 'b', 'c'], columns: ['a', 'b', 'c'], matrix: [[5, 2, 0], [4, 1, 0], [1, 0, 9]] },
    }) as Confusion
    expect(mixUps(c)).toEqual([
      { actual: 'b', predicted: 'a', count: 4, share: 0.8 },
      { actual: 'a', predicted: 'b', count: 2, share: 2 / 7 },
      { actual: 'c', predicted: 'a', count: 1, share: 0.1 },
    ])
    expect(mixUps(c, 1)).toHaveLength(1)
  })
})
