import { describe, expect, it } from 'vitest'
import { reviewKey } from './review'

describe('reviewKey', () => {
  it('maps the page keys to actions, either case', () => {
    expect(reviewKey('u')).toBe('use')
    expect(reviewKey('Enter')).toBe('use')
    expect(reviewKey('K')).toBe('keep')
    expect(reviewKey('d')).toBe('delete')
    expect(reviewKey('ArrowRight')).toBe('skip')
    expect(reviewKey('s')).toBe('skip')
  })
  it('ignores other keys', () => {
    expect(reviewKey('x')).toBeNull()
    expect(reviewKey('1')).toBeNull()
  })
})
