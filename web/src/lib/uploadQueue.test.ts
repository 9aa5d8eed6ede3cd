import { describe, expect, it } from 'vitest'
import { UploadQueue, classFor, isJunk, summarize, type PickedFile, type QueueItem, type Sender, type SendResult } from './uploadQueue'

const file = (path: string, size = 10): PickedFile => ({
  file: new Blob([new Uint8Array(size)]),
  name: path.split('/').pop() as string,
  path,
})

/** A sender whose uploads finish when the test says so. */
function controlledSender() {
  const calls: { name: string; label: string | null; progress: (l: number, t: number) => void; resolve: (r: SendResult) => void; reject: (e: Error) => void }[] = []
  const send: Sender = (_file, name, label, progress) =>
    new Promise((resolve, reject) => calls.push({ name, label, progress, resolve, reject }))
  return { send, calls }
}

const ok = (accepted = 1): SendResult => ({ accepted, duplicates: 0, rejected: [] })
const flush = () => new Promise((r) => setTimeout(r, 0))

describe('which class a file gets', () => {
  it('takes the folder name, else the typed class; zips carry their own', () => {
    expect(classFor('cats/tom.jpg', 'dogs')).toBe('cats')
    expect(classFor('pets/cats/tom.jpg', null)).toBe('cats')
    expect(classFor('tom.jpg', '  dogs ')).toBe('dogs')
    expect(classFor('tom.jpg', '  ')).toBeNull()
    expect(classFor('pets.zip', 'dogs')).toBeNull()
  })

  it('skips hidden and system files that folders carry', () => {
    expect(isJunk('cats/.DS_Store')).toBe(true)
    expect(isJunk('__MACOSX/cats/._tom.jpg')).toBe(true)
    expect(isJunk('cats/Thumbs.db')).toBe(true)
    expect(isJunk('cats/tom.jpg')).toBe(false)
  })
})

describe('UploadQueue', () => {
  it('sends at most `concurrency` files at once and starts the next when one finishes', async () => {
    const { send, calls } = controlledSender()
    const queue = new UploadQueue(send, { concurrency: 2 })
    queue.add([file('a/1.jpg'), file('a/2.jpg'), file('a/3.jpg')], null)
    expect(calls.map((c) => c.name)).toEqual(['1.jpg', '2.jpg'])
    expect(queue.summary()).toMatchObject({ uploading: 2, waiting: 1 })
    calls[0].resolve(ok())
    await flush()
    expect(calls.map((c) => c.name)).toEqual(['1.jpg', '2.jpg', '3.jpg'])
    calls[1].resolve(ok())
    calls[2].resolve(ok())
    await queue.idle()
    expect(queue.summary()).toMatchObject({ total: 3, finished: 3, accepted: 3, failed: 0 })
  })

  it('sends folder files with the folder as class and zips without one', async () => {
    const { send, calls } = controlledSender()
    const queue = new UploadQueue(send, { concurrency: 5 })
    queue.add([file('cats/tom.jpg'), file('all.zip')], 'ignored')
    expect(calls.map((c) => [c.name, c.label])).toEqual([['tom.jpg', 'cats'], ['all.zip', null]])
  })

  it('holds loose images until they get a class', async () => {
    const { send, calls } = controlledSender()
    const queue = new UploadQueue(send)
    queue.add([file('one.jpg'), file('two.jpg')], '')
    expect(calls).toHaveLength(0)
    expect(queue.summary().needsClass).toBe(2)
    expect(queue.assignClass('   ')).toBe(0)
    expect(queue.assignClass('birds')).toBe(2)
    expect(calls.map((c) => c.label)).toEqual(['birds', 'birds'])
  })

  it('tracks progress per file and in total', async () => {
    const { send, calls } = controlledSender()
    const changes: QueueItem[][] = []
    const queue = new UploadQueue(send, { onChange: (items) => changes.push(items) })
    queue.add([file('a/1.jpg', 100), file('a/2.jpg', 300)], null)
    calls[1].progress(150, 300)
    const items = changes[changes.length - 1]
    expect(items[1].loaded).toBe(150)
    expect(summarize(items)).toMatchObject({ bytesTotal: 400, bytesSent: 150 })
    calls[0].resolve(ok())
    await flush()
    expect(queue.summary().bytesSent).toBe(250)
  })

  it('lists rejected files with reasons: a refused image, entries of a zip, and a failed upload', async () => {
    const { send, calls } = controlledSender()
    const done: string[] = []
    const queue = new UploadQueue(send, { concurrency: 3, onFileDone: (i) => done.push(i.name) })
    queue.add([file('a/fake.jpg'), file('set.zip'), file('a/huge.jpg')], null)
    calls[0].resolve({ accepted: 0, duplicates: 0, rejected: [{ name: 'fake.jpg', reason: 'This file is not an image.' }] })
    calls[1].resolve({ accepted: 4, duplicates: 1, rejected: [{ name: 'cats/x.txt', reason: 'Not an image.' }] })
    calls[2].reject(new Error('The file is too large.'))
    await queue.idle()
    const summary = queue.summary()
    expect(summary).toMatchObject({ accepted: 4, duplicates: 1, failed: 1, finished: 3 })
    expect(summary.rejected).toEqual([
      { name: 'fake.jpg', reason: 'This file is not an image.' },
      { name: 'set.zip: cats/x.txt', reason: 'Not an image.' },
      { name: 'huge.jpg', reason: 'The file is too large.' },
    ])
    expect(done.sort()).toEqual(['fake.jpg', 'huge.jpg', 'set.zip'])
  })

  it('retries failed files and clears finished ones', async () => {
    let attempts = 0
    const queue = new UploadQueue(async () => {
      attempts++
      if (attempts === 1) throw new Error('Network down')
      return ok()
    })
    queue.add([file('a/1.jpg')], null)
    await queue.idle()
    expect(queue.summary().failed).toBe(1)
    queue.retryFailed()
    await queue.idle()
    expect(queue.summary()).toMatchObject({ failed: 0, accepted: 1 })
    queue.clearFinished()
    expect(queue.snapshot()).toEqual([])
  })

  it('ignores junk files and reports what was added', () => {
    const queue = new UploadQueue(async () => ok())
    const added = queue.add([file('cats/.DS_Store'), file('cats/tom.jpg')], null)
    expect(added.map((i) => i.path)).toEqual(['cats/tom.jpg'])
  })
})
