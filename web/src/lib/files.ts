// Reading what the user dropped or chose: single files, whole folders (recursively) and zip files.
import type { PickedFile } from './uploadQueue'

// The parts of the File and Directory Entries API we use (typed loosely: browsers differ).
interface Entry {
  isFile: boolean
  isDirectory: boolean
  name: string
}
interface FileEntry extends Entry {
  file(ok: (file: File) => void, fail: (err: unknown) => void): void
}
interface DirectoryEntry extends Entry {
  createReader(): { readEntries(ok: (entries: Entry[]) => void, fail: (err: unknown) => void): void }
}

/** Every file under an entry, with its path relative to the dropped item ("cats/tom.jpg"). */
export async function walkEntry(entry: Entry, prefix = ''): Promise<PickedFile[]> {
  const path = prefix ? `${prefix}/${entry.name}` : entry.name
  if (entry.isFile) {
    const file = await new Promise<File>((ok, fail) => (entry as FileEntry).file(ok, fail))
    return [{ file, name: file.name, path }]
  }
  if (!entry.isDirectory) return []
  const reader = (entry as DirectoryEntry).createReader()
  const children: Entry[] = []
  // readEntries answers in batches (100 at a time in Chromium): call it until it returns nothing.
  for (;;) {
    const batch = await new Promise<Entry[]>((ok, fail) => reader.readEntries(ok, fail))
    if (batch.length === 0) break
    children.push(...batch)
  }
  const nested = await Promise.all(children.map((child) => walkEntry(child, path)))
  return nested.flat()
}

/** Files from a drop: folders are walked, so their files keep the folder name as their class. */
export async function filesFromDrop(data: DataTransfer): Promise<PickedFile[]> {
  const entries: Entry[] = []
  const plain: File[] = []
  for (const item of Array.from(data.items ?? [])) {
    if (item.kind !== 'file') continue
    const entry = (item as DataTransferItem & { webkitGetAsEntry?: () => Entry | null }).webkitGetAsEntry?.()
    if (entry) entries.push(entry)
    else {
      const file = item.getAsFile()
      if (file) plain.push(file)
    }
  }
  if (entries.length === 0 && plain.length === 0) plain.push(...Array.from(data.files ?? []))
  const walked = (await Promise.all(entries.map((e) => walkEntry(e)))).flat()
  return [...walked, ...plain.map((file) => ({ file, name: file.name, path: file.name }))]
}

/** Files from an <input type=file> (with `webkitdirectory`, each has its path inside the folder). */
export function filesFromInput(list: FileList | null): PickedFile[] {
  return Array.from(list ?? []).map((file) => ({
    file,
    name: file.name,
    path: (file as File & { webkitRelativePath?: string }).webkitRelativePath || file.name,
  }))
}
