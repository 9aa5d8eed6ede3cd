// The confusion matrix as a heatmap: each row (a true class) as fractions, so big and small classes
// read alike, plus the mix-ups in words.

export interface Confusion {
  labels: string[]
  columns: string[]
  matrix: number[][]
}

export interface Cell {
  count: number
  /** Share of the row (the images that really are this class), 0–1. */
  share: number
  correct: boolean
}

/** Read the `confusion` entry of version metrics, or null when it is missing or malformed. */
export function readConfusion(metrics: Record<string, unknown> | null | undefined): Confusion | null {
  const c = metrics?.confusion as Partial<Confusion> | undefined
  if (!c || !Array.isArray(c.labels) || !Array.isArray(c.matrix)) return null
  const columns = Array.isArray(c.columns) ? c.columns : c.labels
  if (c.matrix.length !== c.labels.length || c.matrix.some((row) => !Array.isArray(row) || row.length !== columns.length)) {
    return null
  }
  return { labels: c.labels, columns, matrix: c.matrix }
}

export function normalise(c: Confusion): Cell[][] {
  return c.matrix.map((row, i) => {
    const total = row.reduce((n, v) => n + v, 0)
    return row.map((count, j) => ({ count, share: total ? count / total : 0, correct: c.columns[j] === c.labels[i] }))
  })
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
  const cells = normalise(c)
  const out: MixUp[] = []
  c.labels.forEach((actual, i) =>
    c.columns.forEach((predicted, j) => {
      const cell = cells[i][j]
      if (!cell.correct && cell.count > 0) out.push({ actual, predicted, count: cell.count, share: cell.share })
    }),
  )
  return out.sort((a, b) => b.count - a.count || b.share - a.share).slice(0, limit)
}
