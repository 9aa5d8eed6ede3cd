import { describe, expect, it } from 'vitest'
import {
  accuracyWords,
  addableClasses,
  candidateName,
  deliveredOf,
  confidentMistakes,
  leaderboard,
  perClassRows,
  renameCheck,
  settledVersion,
  statusInfo,
  versionOrigin,
  type Version,
} from './models'
import { bars, parseUrlLines } from './predict'

const version = (v: number, lineage: Record<string, unknown>): Version =>
  ({ v, lineage, classes: [], metrics: {}, size_bytes: 1, latency_ms: 1, throughput: 1, threshold: 0, input: {} as Version['input'], created_at: '', active: false })

describe('models in plain words', () => {
  it('status badges', () => {
    expect(statusInfo('ready')).toMatchObject({ label: 'Ready', badge: 'badge-ok' })
    expect(statusInfo('training').label).toBe('Training')
    expect(statusInfo('failed').badge).toBe('badge-danger')
    expect(statusInfo('weird').label).toBe('weird')
  })

  it('accuracy as a sentence', () => {
    expect(accuracyWords(1).headline).toBe('Right on every test image')
    expect(accuracyWords(0.96).headline).toBe('Right about 19 times out of 20')
    expect(accuracyWords(0.87)).toEqual({ headline: 'Right about 9 times out of 10', verdict: 'Good.' })
    expect(accuracyWords(0.5).verdict).toMatch(/^Weak/)
    expect(accuracyWords(null).headline).toBe('Not measured yet')
    expect(accuracyWords(0, 1).headline).toBe('Right on 0 of 1 test image')
    expect(accuracyWords(0.75, 4).verdict).toMatch(/^Too few test images/)
    expect(accuracyWords(0.9, 50).headline).toBe('Right about 9 times out of 10')
  })

  it('candidate names', () => {
    expect(candidateName('mobilenet_v2@160/frozen')).toBe('MobileNetV2 at 160 px, quick')
    expect(candidateName('mobilenet_v2@224/finetune/8ep/+frozen/flip')).toBe(
      'MobileNetV2 at 224 px, fine-tuned, 8 rounds, plus quick features, mirrored views',
    )
    expect(candidateName('smallcnn_rgb@64/scratch/20ep')).toBe('a small network at 64 px, trained from scratch, 20 rounds')
    expect(candidateName('mobilenet_v2@160/finetune/13ep/tuned/+frozen')).toBe(
      'MobileNetV2 at 160 px, fine-tuned, 13 rounds, tuned settings, plus quick features',
    )
    expect(candidateName('mobilenet_v2+efficientnet_lite0@224/frozen')).toBe(
      'MobileNetV2 and EfficientNet-Lite0 at 224 px, quick',
    )
    expect(candidateName('onnx:shop-net@160/frozen')).toBe('shop-net (your own extractor) at 160 px, quick')
    expect(candidateName('odd')).toBe('odd')
  })

  it('per-class rows and confident mistakes tolerate missing parts', () => {
    const metrics = {
      per_class: { classes: { ants: { precision: 1, recall: 0.5, f1: 0.667, support: 2 }, bees: {} } },
      confident_mistakes: [{ image: 'abc', true: 'ants', predicted: 'bees', confidence: 0.9 }, { image: 1 }],
    }
    expect(perClassRows(metrics)).toEqual([
      { name: 'ants', precision: 1, recall: 0.5, f1: 0.667, support: 2 },
      { name: 'bees', precision: 0, recall: 0, f1: 0, support: 0 },
    ])
    expect(perClassRows(null)).toEqual([])
    expect(confidentMistakes(metrics)).toEqual([{ image: 'abc', true: 'ants', predicted: 'bees', confidence: 0.9 }])
    expect(confidentMistakes({})).toEqual([])
  })

  it('the leaderboard comes from the finished job, else from the newest version of that job', () => {
    const job = { result: { chosen: 'b@1/frozen', leaderboard: [{ name: 'a@1/frozen', val_accuracy: 0.7, seconds: 2 }, { name: 'b@1/frozen', val_accuracy: 0.9 }] } }
    const fromJob = leaderboard(job, [])
    expect(fromJob.map((c) => [c.name, c.chosen])).toEqual([['b@1/frozen', true], ['a@1/frozen', false]])
    const versions = [
      version(1, { job_id: 'j1', candidate: { name: 'a@1/frozen' }, leaderboard: [{ name: 'a@1/frozen', val_accuracy: 0.7 }] }),
      version(2, { job_id: 'j1', candidate: { name: 'c@1/frozen' }, leaderboard: [{ name: 'a@1/frozen', val_accuracy: 0.7 }, { name: 'c@1/frozen', val_accuracy: 0.8 }] }),
      version(3, { job_id: 'other', leaderboard: [{ name: 'z', val_accuracy: 1 }] }),
    ]
    const running = leaderboard({ result: null }, versions, 'j1')
    expect(running.map((c) => c.name)).toEqual(['c@1/frozen', 'a@1/frozen'])
    expect(running[0].chosen).toBe(true)
    expect(leaderboard(null, [], 'j1')).toEqual([])
  })

  it('where a version came from', () => {
    expect(versionOrigin(version(1, { change: 'trained', candidate: { name: 'mobilenet_v2@160/frozen' } }))).toBe('Trained: MobileNetV2 at 160 px, quick')
    expect(versionOrigin(version(2, { change: "added 'wasps'", parent: 1 }))).toBe("Added 'wasps'")
    expect(versionOrigin(version(3, {}))).toBe('Trained')
    expect(versionOrigin(version(4, { change: "renamed 'sunflower' to 'sunflowers'", parent: 3 }))).toBe("Renamed 'sunflower' to 'sunflowers'")
    expect(versionOrigin(version(5, { change: "renamed 'a' to 'b'; added 'c'", parent: 4 }))).toBe("Renamed 'a' to 'b'; added 'c'")
  })

  it('checks a new class name before renaming', () => {
    const classes = ['daisy', 'dandelion', 'sunflower']
    expect(renameCheck('  sunflowers ', 'sunflower', classes)).toEqual({ name: 'sunflowers', ok: true, problem: null })
    expect(renameCheck('sunflower', 'sunflower', classes)).toEqual({ name: 'sunflower', ok: false, problem: null }) // unchanged
    expect(renameCheck('   ', 'sunflower', classes)).toEqual({ name: '', ok: false, problem: null })
    expect(renameCheck('daisy', 'sunflower', classes)).toEqual({ name: 'daisy', ok: false, problem: 'The model already has a class named “daisy”.' })
    expect(renameCheck('Daisy', 'sunflower', classes).ok).toBe(true) // names are case-sensitive, as in the API
    expect(renameCheck('cafe\u0301', 'tea', ['café']).ok).toBe(false) // compared as the API stores names (NFC)
  })

  it('the serving version once it has the wanted classes', () => {
    const v1 = { ...version(1, {}), classes: ['a', 'b'], active: false }
    const v2 = { ...version(2, {}), classes: ['a', 'b', 'c'], active: true }
    expect(settledVersion([v1, v2], ['c', 'a', 'b'])).toBe(v2)
    expect(settledVersion([v1, v2], ['a', 'b', 'c', 'd'])).toBeNull() // another change still settling
    expect(settledVersion([{ ...v1, active: true }, { ...v2, active: false }], ['a', 'b', 'c'])).toBeNull()
    expect(settledVersion([v1], ['a', 'b'])).toBeNull() // nothing serves
  })

  it('classes the model could add', () => {
    const out = addableClasses([{ name: 'ants', count: 9 }, { name: 'wasps', count: 3 }, { name: 'bees', count: 7 }], ['ants'])
    expect(out).toEqual([
      { name: 'wasps', count: 3, enough: false, missing: 2 },
      { name: 'bees', count: 7, enough: true, missing: 0 },
    ])
  })
})

describe('predictions and imports', () => {
  it('marks the winning bar, none when unknown', () => {
    const top = [{ label: 'ants', confidence: 0.8 }, { label: 'bees', confidence: 0.2 }]
    expect(bars({ label: 'ants', confidence: 0.8, top }).map((b) => b.winner)).toEqual([true, false])
    expect(bars({ label: null, confidence: 0.4, top }).map((b) => b.winner)).toEqual([false, false])
  })

  it('reads pasted URL lines with their class', () => {
    const { items, problems } = parseUrlLines(
      'https://x.org/a.jpg ants\nbees, https://x.org/b.jpg\n# a comment\n\nhttps://x.org/c.jpg\nnot a url\n',
      'wasps',
    )
    expect(items).toEqual([
      { url: 'https://x.org/a.jpg', label: 'ants' },
      { url: 'https://x.org/b.jpg', label: 'bees' },
      { url: 'https://x.org/c.jpg', label: 'wasps' },
    ])
    expect(problems).toEqual(['Line 6 has no web address (it must start with http:// or https://).'])
    expect(parseUrlLines('https://x.org/a.jpg', '').problems[0]).toMatch(/no class/)
  })
})

describe('deliveredOf', () => {
  it('reads what a version with a caution delivers, and nothing for older versions', () => {
    expect(deliveredOf({ caution_curve: [], selective_accuracy: 0.9, coverage: 0.95 })).toEqual({ right: 0.9, answered: 0.95 })
    expect(deliveredOf({ selective_accuracy: 0.9, coverage: 0.95 })).toBeNull()
  })
})
