import { describe, expect, it } from 'vitest'
import { walkEntry } from './files'

// Fakes of the browser's FileSystemEntry objects, with readEntries answering in batches like Chromium.
function fileEntry(name: string) {
  return { isFile: true, isDirectory: false, name, file: (ok: (f: File) => void) => ok(new File(['x'], name)) }
}
function dirEntry(name: string, children: object[], batch = 2) {
  return {
    isFile: false,
    isDirectory: true,
    name,
    createReader() {
      let offset = 0
      return {
        readEntries(ok: (entries: object[]) => void) {
          const slice = children.slice(offset, offset + batch)
          offset += batch
          setTimeout(() => ok(slice as never[]), 0)
        },
      }
    },
  }
}

describe('walking a dropped folder', () => {
  it('finds every file in nested folders, reading entries until none are left', async () => {
    const tree = dirEntry('pets', [
      dirEntry('cats', [fileEntry('a.jpg'), fileEntry('b.jpg'), fileEntry('c.jpg')]),
      dirEntry('dogs', [fileEntry('d.jpg')]),
      fileEntry('readme.txt'),
    ])
    const files = await walkEntry(tree as never)
    expect(files.map((f) => f.path).sort()).toEqual([
      'pets/cats/a.jpg',
      'pets/cats/b.jpg',
      'pets/cats/c.jpg',
      'pets/dogs/d.jpg',
      'pets/readme.txt',
    ])
    expect(files.every((f) => f.file.size === 1)).toBe(true)
  })
})
