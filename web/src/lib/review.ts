// The label review page's keys (pure, so it is unit-tested).

export type ReviewAction = 'use' | 'keep' | 'delete' | 'skip'

/** The action a key press asks for on the label review page, or null. */
export function reviewKey(key: string): ReviewAction | null {
  switch (key.toLowerCase()) {
    case 'u':
    case 'enter':
      return 'use'
    case 'k':
      return 'keep'
    case 'd':
    case 'delete':
      return 'delete'
    case 's':
    case 'arrowright':
      return 'skip'
    default:
      return null
  }
}
