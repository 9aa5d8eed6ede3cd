// The upload queue: which files go up, with which class, a few at a time, and what became of each.
// Pure logic (no DOM), so it is unit-tested with a fake sender.

export interface PickedFile {
  file: Blob
  /** The file's name. */
  name: string
  /** Path inside a dropped or chosen folder ("cats/tom.jpg"), or just the name. */
  path: string
}

export type ItemStatus = 'needs-class' | 'queued' | 'uploading' | 'done' | 'failed'

export interface Rejection {
  name: string
  reason: string
}

export interface QueueItem {
  id: number
  name: string
  path: string
  size: number
  isZip: boolean
  label: string | null
  status: ItemStatus
  loaded: number
  accepted: number
  duplicates: number
  rejected: Rejection[]
  error: string | null
}

export interface SendResult {
  accepted: number
  duplicates: number
  rejected: { name: string; reason: string }[]
}

export type Sender = (
  file: Blob,
  name: string,
  label: string | null,
  onProgress: (loaded: number, total: number) => void,
) => Promise<SendResult>

export interface QueueSummary {
  total: number
  finished: number
  uploading: number
  waiting: number
  needsClass: number
  accepted: number
  duplicates: number
  failed: number
  rejected: Rejection[]
  bytesTotal: number
  bytesSent: number
}

const IMAGE_EXTENSIONS = /\.(jpe?g|png|webp|bmp|gif|tiff?)$/i

export function isZipName(name: string): boolean {
  return /\.zip$/i.test(name)
}

/** Hidden and system files that folders carry along (".DS_Store", "Thumbs.db", "__MACOSX/…"). */
export function isJunk(path: string): boolean {
  const parts = path.split('/')
  const base = parts[parts.length - 1]
  return parts.some((p) => p.startsWith('.') || p === '__MACOSX') || /^(thumbs\.db|desktop\.ini)$/i.test(base)
}

/**
 * The class a file belongs to: its folder's name for files inside folders ("pets/cats/tom.jpg" → "cats"),
 * none for zip files (their folders name the classes), else the class the user typed (or none yet).
 */
export function classFor(path: string, fallback: string | null): string | null {
  if (isZipName(path)) return null
  const parts = path.split('/').filter(Boolean)
  if (parts.length >= 2) return parts[parts.length - 2]
  const typed = fallback?.trim()
  return typed ? typed : null
}

export function looksLikeImage(name: string): boolean {
  return IMAGE_EXTENSIONS.test(name)
}

export class UploadQueue {
  private items: QueueItem[] = []
  private files = new Map<number, Blob>()
  private nextId = 1
  private active = 0
  private readonly send: Sender
  private readonly concurrency: number
  private readonly onChange: (items: QueueItem[]) => void
  private readonly onFileDone: (item: QueueItem) => void

  constructor(
    send: Sender,
    options: {
      concurrency?: number
      onChange?: (items: QueueItem[]) => void
      onFileDone?: (item: QueueItem) => void
    } = {},
  ) {
    this.send = send
    this.concurrency = Math.max(1, options.concurrency ?? 3)
    this.onChange = options.onChange ?? (() => {})
    this.onFileDone = options.onFileDone ?? (() => {})
  }

  /** Add files; files inside folders take the folder's name as class, loose images the typed one. */
  add(picked: PickedFile[], typedClass: string | null): QueueItem[] {
    const added: QueueItem[] = []
    for (const p of picked) {
      if (isJunk(p.path)) continue
      const isZip = isZipName(p.name)
      const label = classFor(p.path, typedClass)
      const item: QueueItem = {
        id: this.nextId++,
        name: p.name,
        path: p.path,
        size: p.file.size,
        isZip,
        label,
        status: isZip || label ? 'queued' : 'needs-class',
        loaded: 0,
        accepted: 0,
        duplicates: 0,
        rejected: [],
        error: null,
      }
      this.files.set(item.id, p.file)
      this.items.push(item)
      added.push(item)
    }
    this.changed()
    this.pump()
    return added
  }

  /** Give a class to the loose images that are waiting for one, and send them. */
  assignClass(label: string): number {
    const name = label.trim()
    if (!name) return 0
    let count = 0
    for (const item of this.items) {
      if (item.status === 'needs-class') {
        item.label = name
        item.status = 'queued'
        count++
      }
    }
    this.changed()
    this.pump()
    return count
  }

  retryFailed(): void {
    for (const item of this.items) {
      if (item.status === 'failed') {
        item.status = 'queued'
        item.error = null
        item.loaded = 0
      }
    }
    this.changed()
    this.pump()
  }

  /** Forget finished files (and those waiting for a class); uploads in flight continue. */
  clearFinished(): void {
    this.items = this.items.filter((i) => i.status === 'queued' || i.status === 'uploading')
    for (const id of [...this.files.keys()]) {
      if (!this.items.some((i) => i.id === id)) this.files.delete(id)
    }
    this.changed()
  }

  snapshot(): QueueItem[] {
    return this.items.map((i) => ({ ...i, rejected: [...i.rejected] }))
  }

  summary(): QueueSummary {
    return summarize(this.items)
  }

  /** Resolves when nothing is queued or uploading. */
  async idle(): Promise<void> {
    while (this.items.some((i) => i.status === 'queued' || i.status === 'uploading')) {
      await new Promise((r) => setTimeout(r, 5))
    }
  }

  private changed(): void {
    this.onChange(this.snapshot())
  }

  private pump(): void {
    while (this.active < this.concurrency) {
      const next = this.items.find((i) => i.status === 'queued')
      if (!next) return
      void this.run(next)
    }
  }

  private async run(item: QueueItem): Promise<void> {
    const file = this.files.get(item.id)
    item.status = 'uploading'
    this.active++
    this.changed()
    try {
      if (!file) throw new Error('The file is no longer available.')
      const result = await this.send(file, item.name, item.isZip ? null : item.label, (loaded) => {
        item.loaded = Math.min(loaded, item.size)
        this.changed()
      })
      item.status = 'done'
      item.loaded = item.size
      item.accepted = result.accepted
      item.duplicates = result.duplicates
      // A single image that is rejected is reported under its own name; a zip's entries under theirs.
      item.rejected = result.rejected.map((r) => ({ name: item.isZip ? `${item.name}: ${r.name}` : r.name, reason: r.reason }))
      this.files.delete(item.id)
    } catch (err) {
      item.status = 'failed'
      item.error = err instanceof Error && err.message ? err.message : 'The upload failed.'
    } finally {
      this.active--
    }
    this.changed()
    this.onFileDone(item)
    this.pump()
  }
}

export function summarize(items: QueueItem[]): QueueSummary {
  const s: QueueSummary = {
    total: items.length,
    finished: 0,
    uploading: 0,
    waiting: 0,
    needsClass: 0,
    accepted: 0,
    duplicates: 0,
    failed: 0,
    rejected: [],
    bytesTotal: 0,
    bytesSent: 0,
  }
  for (const i of items) {
    s.bytesTotal += i.size
    s.bytesSent += i.status === 'done' ? i.size : i.loaded
    if (i.status === 'done') {
      s.finished++
      s.accepted += i.accepted
      s.duplicates += i.duplicates
      s.rejected.push(...i.rejected)
    } else if (i.status === 'failed') {
      s.finished++
      s.failed++
      s.rejected.push({ name: i.name, reason: i.error ?? 'The upload failed.' })
    } else if (i.status === 'uploading') s.uploading++
    else if (i.status === 'queued') s.waiting++
    else s.needsClass++
  }
  return s
}
