// Models, versions and jobs in plain words: status badges, accuracy sentences, candidates, per-class rows.
import type { Schemas } from './api/http'

export type Model = Schemas['ModelPublic']
export type Version = Schemas['VersionPublic']
export type Job = Schemas['JobPublic']
type Metrics = Record<string, unknown>

export const ACTIVE_JOB = new Set<Job['status']>(['queued', 'running'])
export const isJobActive = (job: Pick<Job, 'status'> | null | undefined) => !!job && ACTIVE_JOB.has(job.status)

export interface StatusInfo {
  label: string
  badge: string
  text: string
}

const STATUS: Record<string, StatusInfo> = {
  queued: { label: 'Waiting to train', badge: 'badge-accent', text: 'Training starts as soon as the server has room.' },
  training: { label: 'Training', badge: 'badge-accent', text: 'Pigeonhole is trying models on your images.' },
  ready: { label: 'Ready', badge: 'badge-ok', text: 'It answers predictions.' },
  failed: { label: 'Failed', badge: 'badge-danger', text: 'Training stopped before any model was ready.' },
  cancelled: { label: 'Cancelled', badge: 'badge-warn', text: 'Training was stopped before any model was ready.' },
}

export function statusInfo(status: string): StatusInfo {
  return STATUS[status] ?? { label: status, badge: '', text: '' }
}

const JOB_STATUS: Record<Job['status'], StatusInfo> = {
  queued: { label: 'Waiting', badge: 'badge-accent', text: 'Waiting for a free worker.' },
  running: { label: 'Running', badge: 'badge-accent', text: '' },
  succeeded: { label: 'Done', badge: 'badge-ok', text: '' },
  failed: { label: 'Failed', badge: 'badge-danger', text: '' },
  cancelled: { label: 'Cancelled', badge: 'badge-warn', text: '' },
}

export function jobStatusInfo(status: Job['status']): StatusInfo {
  return JOB_STATUS[status] ?? { label: status, badge: '', text: '' }
}

const JOB_KIND: Record<string, string> = {
  train: 'Training',
  retrain: 'Retraining',
  expand: 'Changing classes',
  import: 'Importing images',
  selftest: 'Self-test',
}

export function jobKind(kind: string): string {
  return JOB_KIND[kind] ?? kind
}

function num(value: unknown): number | null {
  return typeof value === 'number' && Number.isFinite(value) ? value : null
}

/** The accuracy of a version's metrics (on its test images), or null. */
export function accuracyOf(metrics: Metrics | null | undefined): number | null {
  return num(metrics?.accuracy)
}

/** What the served version delivers on its test images: right when it answers, and how often it answers
 * (versions with a caution; null for versions made before, whose accuracy answered every image). */
export function deliveredOf(metrics: Metrics | null | undefined): { right: number; answered: number } | null {
  if (!Array.isArray(metrics?.caution_curve)) return null
  const right = num(metrics?.selective_accuracy)
  const answered = num(metrics?.coverage)
  return right === null || answered === null ? null : { right, answered }
}

/** How many test images the accuracy was measured on. */
export function testImagesOf(metrics: Metrics | null | undefined): number | null {
  return num(metrics?.n)
}

/** "Right about 9 times out of 10" and a verdict, for people who do not read percentages. */
export function accuracyWords(accuracy: number | null, tested: number | null = null): { headline: string; verdict: string } {
  if (accuracy === null) return { headline: 'Not measured yet', verdict: '' }
  const pct = Math.round(accuracy * 100)
  let headline: string
  if (tested !== null && tested > 0 && tested < 10) {
    const right = Math.round(accuracy * tested)
    return {
      headline: `Right on ${right} of ${tested} test image${tested === 1 ? '' : 's'}`,
      verdict: 'Too few test images to judge: add more images per class for a reliable figure.',
    }
  }
  if (pct >= 100) headline = 'Right on every test image'
  else if (pct >= 95) headline = `Right about ${Math.round(accuracy * 20)} times out of 20`
  else headline = `Right about ${Math.max(0, Math.round(accuracy * 10))} times out of 10`
  const verdict =
    pct >= 95 ? 'Excellent.' : pct >= 85 ? 'Good.' : pct >= 70 ? 'Fair: more images per class usually help.' : 'Weak: add more and clearer images per class, then retrain.'
  return { headline, verdict }
}

export interface ClassRow {
  name: string
  precision: number
  recall: number
  f1: number
  support: number
}

export function perClassRows(metrics: Metrics | null | undefined): ClassRow[] {
  const classes = (metrics?.per_class as { classes?: Record<string, Record<string, unknown>> } | undefined)?.classes
  if (!classes || typeof classes !== 'object') return []
  return Object.entries(classes).map(([name, v]) => ({
    name,
    precision: num(v?.precision) ?? 0,
    recall: num(v?.recall) ?? 0,
    f1: num(v?.f1) ?? 0,
    support: num(v?.support) ?? 0,
  }))
}

export interface Mistake {
  image: string
  true: string
  predicted: string
  confidence: number
}

export function confidentMistakes(metrics: Metrics | null | undefined): Mistake[] {
  const list = metrics?.confident_mistakes
  if (!Array.isArray(list)) return []
  return list.filter(
    (m): m is Mistake =>
      !!m && typeof m.image === 'string' && typeof m.true === 'string' && typeof m.predicted === 'string' && typeof m.confidence === 'number',
  )
}

const FAMILY: Record<string, string> = {
  mobilenet_v2: 'MobileNetV2',
  mobilenet_v3_small: 'MobileNetV3 small',
  mobilenet_v3_large: 'MobileNetV3 large',
  efficientnet_b0: 'EfficientNet-B0',
  squeezenet1_0: 'SqueezeNet',
  resnet18: 'ResNet-18',
  efficientnet_lite0: 'EfficientNet-Lite0',
  efficientnet_lite1: 'EfficientNet-Lite1',
  efficientnet_lite2: 'EfficientNet-Lite2',
  efficientnet_v2_s: 'EfficientNetV2-S',
  convnext_tiny: 'ConvNeXt-Tiny',
  dinov2_vits14: 'DINOv2',
  smallcnn_l: 'a small network',
  smallcnn_rgb: 'a small network',
  pixels_l: 'raw pixels',
  pixels_rgb: 'raw pixels',
}

const KIND: Record<string, string> = {
  frozen: 'quick',
  finetune: 'fine-tuned',
  scratch: 'trained from scratch',
}

/**
 * A search candidate's name in words: "mobilenet_v2@160/frozen" → "MobileNetV2 at 160 px, quick";
 * "mobilenet_v2@224/finetune/8ep/+frozen/flip" → "MobileNetV2 at 224 px, fine-tuned, 8 rounds, mirrored views".
 */
export function candidateName(name: string): string {
  const [head, ...rest] = name.split('/')
  const match = /^([^@]+)(?:@(\d+))?$/.exec(head)
  if (!match) return name
  const [, family, size] = match
  // "a+b": two extractors' features side by side; "onnx:name": the operator's own extractor
  const one = (f: string) => (f.startsWith('onnx:') ? `${f.slice(5)} (your own extractor)` : (FAMILY[f] ?? f.replaceAll('_', ' ')))
  const base = family.split('+').map(one).join(' and ')
  const parts = [size ? `${base} at ${size} px` : base]
  for (const part of rest) {
    const epochs = /^(\d+)ep$/.exec(part)
    if (KIND[part]) parts.push(KIND[part])
    else if (epochs) parts.push(`${epochs[1]} rounds`)
    else if (part === '+frozen') parts.push('plus quick features')
    else if (part === 'flip') parts.push('mirrored views')
    else if (part === 'tuned') parts.push('tuned settings')
    else if (/^probe\d+$/.test(part)) parts.push('quick probe')
    else if (/^rff\d+$/.test(part)) parts.push('extra features')
    else parts.push(part)
  }
  return parts.join(', ')
}

export interface Candidate {
  name: string
  valAccuracy: number | null
  seconds: number | null
  mflops: number | null
  chosen: boolean
}

/**
 * The candidates a training tried, best first: from the finished job's result, else from the newest
 * version's lineage (what the search had tried when that version was made).
 */
export function leaderboard(job: Pick<Job, 'result'> | null | undefined, versions: Version[], jobId?: string | null): Candidate[] {
  const fromJob = (job?.result as { leaderboard?: unknown; chosen?: unknown } | null | undefined) ?? null
  let raw: unknown = fromJob?.leaderboard
  let chosen: string | null = typeof fromJob?.chosen === 'string' ? fromJob.chosen : null
  if (!Array.isArray(raw)) {
    const mine = versions.filter((v) => !jobId || v.lineage?.job_id === jobId)
    const newest = [...mine].sort((a, b) => b.v - a.v).find((v) => Array.isArray(v.lineage?.leaderboard))
    raw = newest?.lineage?.leaderboard
    const cand = newest?.lineage?.candidate as { name?: unknown } | undefined
    chosen = typeof cand?.name === 'string' ? cand.name : null
  }
  if (!Array.isArray(raw)) return []
  const seen = new Map<string, Candidate>()
  for (const entry of raw as Record<string, unknown>[]) {
    if (!entry || typeof entry.name !== 'string') continue
    seen.set(entry.name, {
      name: entry.name,
      valAccuracy: num(entry.val_accuracy),
      seconds: num(entry.seconds),
      mflops: num(entry.mflops),
      chosen: entry.name === chosen,
    })
  }
  return [...seen.values()].sort((a, b) => (b.valAccuracy ?? -1) - (a.valAccuracy ?? -1))
}

/** What made a version, in words ("Trained: MobileNetV2 at 160 px, quick", "added 'wasps'"). */
export function versionOrigin(version: Version): string {
  const lineage = version.lineage ?? {}
  const change = typeof lineage.change === 'string' ? lineage.change : null
  if (change && change !== 'trained') return change.charAt(0).toUpperCase() + change.slice(1)
  const cand = lineage.candidate as { name?: unknown } | undefined
  return typeof cand?.name === 'string' ? `Trained: ${candidateName(cand.name)}` : 'Trained'
}

/**
 * Whether a class can be renamed to what was typed: the trimmed name, whether the rename can be sent, and a
 * sentence when it cannot (nothing to say for an empty or unchanged name: the button just stays disabled).
 */
export function renameCheck(typed: string, current: string, classes: string[]): { name: string; ok: boolean; problem: string | null } {
  const name = typed.normalize('NFC').trim() // as the API stores it
  if (!name || name === current) return { name, ok: false, problem: null }
  if (classes.includes(name)) return { name, ok: false, problem: `The model already has a class named “${name}”.` }
  return { name, ok: true, problem: null }
}

/** Classes of the dataset that the model could add (with enough images). */
export function addableClasses(datasetClasses: { name: string; count: number }[], modelClasses: string[], minimum = 5) {
  const have = new Set(modelClasses)
  return datasetClasses
    .filter((c) => !have.has(c.name))
    .map((c) => ({ ...c, enough: c.count >= minimum, missing: Math.max(0, minimum - c.count) }))
}

/** The serving version if it has exactly the classes the model should have (else null: a change is still settling). */
export function settledVersion(versions: Version[], wanted: string[]): Version | null {
  const active = versions.find((v) => v.active)
  if (!active) return null
  const have = new Set(active.classes)
  return have.size === wanted.length && wanted.every((c) => have.has(c)) ? active : null
}
