import { describe, expect, it } from 'vitest'
import { filterByName, firstFew, matches } from './classFilter'

describe('class filter', () => {
  it('matches parts of names, whatever the case and accents', () => {
    expect(matches('Pâquerette', 'paque')).toBe(true)
    expect(matches('glyph-4e00', 'GLYPH-4E')).toBe(true)
    expect(matches('rose', '  ')).toBe(true)
    expect(matches('rose', 'tulip')).toBe(false)
  })

  it('keeps the order and everything when the query is empty', () => {
    const classes = Array.from({ length: 1000 }, (_, i) => ({ name: `class ${String(i).padStart(4, '0')}` }))
    expect(filterByName(classes, '', (c) => c.name)).toBe(classes)
    expect(filterByName(classes, 'class 099', (c) => c.name).map((c) => c.name)).toEqual(
      Array.from({ length: 10 }, (_, i) => `class 099${i}`),
    )
  })

  it('names the first few and counts the rest', () => {
    expect(firstFew(['a', 'b', 'c'], 2)).toEqual({ shown: ['a', 'b'], more: 1 })
    expect(firstFew(['a'], 2)).toEqual({ shown: ['a'], more: 0 })
  })
})
