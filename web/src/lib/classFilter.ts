// Long class lists (a parts catalogue, a herbarium: hundreds to thousands of classes) get a search box, and
// summaries name a few classes and count the rest.

/** A search box appears from this many classes. */
export const SEARCH_FROM = 12

/** Case- and accent-insensitive substring match; an empty query matches everything. */
export function matches(name: string, query: string): boolean {
  const fold = (s: string) => s.normalize('NFKD').replace(/\p{M}/gu, '').toLocaleLowerCase()
  const q = fold(query.trim())
  return !q || fold(name).includes(q)
}

/** The items whose name matches, in their order. */
export function filterByName<T>(items: T[], query: string, name: (item: T) => string): T[] {
  return query.trim() ? items.filter((item) => matches(name(item), query)) : items
}

/** The first `limit` names and how many are left out ("a, b, c and 997 more"). */
export function firstFew<T>(items: T[], limit = 12): { shown: T[]; more: number } {
  return { shown: items.slice(0, limit), more: Math.max(0, items.length - limit) }
}
