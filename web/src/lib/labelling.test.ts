import { describe, expect, it } from 'vitest'
import { classesOnScreen, classKey, labelKey } from './labelling'

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

describe('classes on screen', () => {
  const many = Array.from({ length: 1000 }, (_, i) => `glyph ${i}`)

  it('shows every class when there are few', () => {
    expect(classesOnScreen(['a', 'b'], ['b'], '')).toEqual(['a', 'b'])
  })

  it("puts the model's guesses first among many, ten buttons at most", () => {
    const shown = classesOnScreen(many, ['glyph 500', 'glyph 7', 'not a class'], '')
    expect(shown).toHaveLength(10)
    expect(shown.slice(0, 3)).toEqual(['glyph 500', 'glyph 7', 'glyph 0'])
  })

  it('shows what matches while the person searches', () => {
    expect(classesOnScreen(many, ['glyph 500'], 'glyph 99')).toEqual(
      ['glyph 99', 'glyph 990', 'glyph 991', 'glyph 992', 'glyph 993', 'glyph 994', 'glyph 995', 'glyph 996', 'glyph 997', 'glyph 998'],
    )
  })
})
