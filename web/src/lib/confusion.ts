// The confusion matrix as a heatmap: each row (a true class) as fractions, so big and small classes
// read alike, plus the mix-ups in words. Versions store only the non-zero cells (`cells`: [row, column, count]);
// older ones the whole `matrix`. Past GRID_LIMIT classes a grid cannot be read: the page lists the most
// confused pairs instead.

export const GRID_LIMIT = 25

export interface Confusion {
  labels: string[]
  columns: string[]
  /** Non-zero cells, [row, column, count]. */
  cells: [number, number, number][]
}

export interface Cell {
  count: number
  /** Share of the row (the images that really are this class), 0–1. */
  share: number
  correct: boolean
}

function isCell(cell: unknown, rows: number, columns: number): cell is [number, number, number] {
  return (
    Array.isArray(cell) &&
    cell.length === 3 &&
    cell.every((n) => Number.isInteger(n) && n >= 0) &&
    cell[0] < rows &&
    cell[1] < columns
  )
}

/** Read the `confusion` entry of version metrics, or null when it is missing or malformed. */
export function readConfusion(metrics: Record<string, unknown> | null | undefined): Confusion | null {
  const c = metrics?.confusion as { labels?: unknown; columns?: unknown; matrix?: unknown; cells?: unknown } | undefined
  if (!c || !Array.isArray(c.labels)) return null
  const labels = c.labels as string[]
  const columns = (Array.isArray(c.columns) ? c.columns : labels) as string[]
  if (Array.isArray(c.cells)) {
    if (!c.cells.every((cell) => isCell(cell, labels.length, columns.length))) return null
    return { labels, columns, cells: c.cells as [number, number, number][] }
  }
  if (!Array.isArray(c.matrix)) return null
  const matrix = c.matrix as unknown[]
  if (matrix.length !== labels.length || matrix.some((row) => !Array.isArray(row) || row.length !== columns.length)) {
    return null
  }
  const cells: [number, number, number][] = []
  ;(matrix as number[][]).forEach((row, i) => row.forEach((count, j) => count && cells.push([i, j, count])))
  return { labels, columns, cells }
}

function rowTotals(c: Confusion): number[] {
  const totals = c.labels.map(() => 0)
  for (const [i, , count] of c.cells) totals[i] += count
  return totals
}

/** The full grid (for GRID_LIMIT classes or fewer). */
export function normalise(c: Confusion): Cell[][] {
  const totals = rowTotals(c)
  const grid = c.labels.map((label) => c.columns.map((column) => ({ count: 0, share: 0, correct: column === label })))
  for (const [i, j, count] of c.cells) grid[i][j] = { ...grid[i][j], count, share: totals[i] ? count / totals[i] : 0 }
  return grid
}

/** Background colour of a cell: green for right answers, red for mistakes, stronger for larger shares. */
export function cellColour(cell: Cell): string {
  if (cell.count === 0) return 'transparent'
  const alpha = (0.12 + 0.78 * cell.share).toFixed(2)
  return cell.correct ? `rgb(15 122 74 / ${alpha})` : `rgb(192 38 62 / ${alpha})`
}

/** Text colour that stays readable on the cell. */
export function cellInk(cell: Cell): string {
  return cell.count > 0 && cell.share >= 0.55 ? '#fff' : 'inherit'
}

export interface MixUp {
  actual: string
  predicted: string
  count: number
  share: number
}

/** The most frequent mistakes, largest first ("bees taken for wasps 3 times"). */
export function mixUps(c: Confusion, limit = 3): MixUp[] {
  const totals = rowTotals(c)
  const out: MixUp[] = []
  for (const [i, j, count] of c.cells) {
    if (count > 0 && c.columns[j] !== c.labels[i]) {
      out.push({ actual: c.labels[i], predicted: c.columns[j], count, share: totals[i] ? count / totals[i] : 0 })
    }
  }
  return out.sort((a, b) => b.count - a.count || b.share - a.share).slice(0, limit)
}
