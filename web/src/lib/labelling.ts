// The labelling page's keys (pure, so it is unit-tested): number keys pick a class, S skips, N says "none of these".
import { filterByName } from './classFilter'

export type LabelAction = { kind: 'class'; index: number } | { kind: 'skip' } | { kind: 'none' }

/** What a key press asks for with `classCount` classes on screen (keys 1-9, then 0 for the tenth), or null. */
export function labelKey(key: string, classCount: number): LabelAction | null {
  if (/^[0-9]$/.test(key)) {
    const index = key === '0' ? 9 : Number(key) - 1
    return index < classCount ? { kind: 'class', index } : null
  }
  switch (key.toLowerCase()) {
    case 's':
    case 'arrowright':
      return { kind: 'skip' }
    case 'n':
      return { kind: 'none' }
    default:
      return null
  }
}

/** The key shown on a class button (the first ten classes have one). */
export function classKey(index: number): string | null {
  return index < 9 ? String(index + 1) : index === 9 ? '0' : null
}

/** After how many new labels the model is updated and the queue ordered again. */
export const GROW_EVERY = 10

/** The classes given a button (and so a number key): all of them up to `limit`; past that the model's guesses first,
 * then the others in order, or, while the person searches, the classes whose name matches. */
export function classesOnScreen(classes: string[], guesses: string[], query: string, limit = 10): string[] {
  if (classes.length <= limit) return classes
  if (query.trim()) return filterByName(classes, query, (name) => name).slice(0, limit)
  const known = new Set(classes)
  const first = guesses.filter((name) => known.has(name))
  const rest = classes.filter((name) => !first.includes(name))
  return [...first, ...rest].slice(0, limit)
}
