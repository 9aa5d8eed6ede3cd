import { describe, expect, it } from 'vitest'
import { classKey, labelKey } from './labelling'

describe('labelKey', () => {
  it('picks classes with number keys, 0 for the tenth', () => {
    expect(labelKey('1', 3)).toEqual({ kind: 'class', index: 0 })
    expect(labelKey('3', 3)).toEqual({ kind: 'class', index: 2 })
    expect(labelKey('4', 3)).toBeNull()
    expect(labelKey('0', 10)).toEqual({ kind: 'class', index: 9 })
    expect(labelKey('0', 9)).toBeNull()
  })
  it('skips and says none of these', () => {
    expect(labelKey('s', 2)).toEqual({ kind: 'skip' })
    expect(labelKey('ArrowRight', 2)).toEqual({ kind: 'skip' })
    expect(labelKey('N', 2)).toEqual({ kind: 'none' })
    expect(labelKey('x', 2)).toBeNull()
  })
  it('shows keys on the first ten classes', () => {
    expect([0, 8, 9, 10].map(classKey)).toEqual(['1', '9', '0', null])
  })
})
