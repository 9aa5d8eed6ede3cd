// Sending an image to a model for a prediction (multipart, like a program would) and reading the answer.
import { cookieSource, csrfHeaders, toApiError, type Schemas } from './api/http'

export type PredictionResult = Schemas['PredictionResult']
export type Prediction = Schemas['Prediction']

export async function predictFile(modelId: string, file: Blob, name: string, topK = 5, version?: number | null, neighbours = 0): Promise<PredictionResult> {
  const form = new FormData()
  form.append('files', file, name)
  const query = new URLSearchParams({ top_k: String(topK) })
  if (version) query.set('version', String(version))
  if (neighbours > 0) query.set('neighbours', String(neighbours))
  let response: Response
  try {
    response = await fetch(`/api/v1/models/${encodeURIComponent(modelId)}/predict?${query}`, {
      method: 'POST',
      body: form,
      credentials: 'same-origin',
      headers: csrfHeaders('POST', cookieSource()),
    })
  } catch {
    throw toApiError(0, null)
  }
  let body: unknown = null
  try {
    body = await response.json()
  } catch {
    body = null
  }
  if (!response.ok) throw toApiError(response.status, body)
  return body as PredictionResult
}

/** Bars for the top classes: widths as shares of 100 %, the winner marked (none when "unknown"). */
export function bars(prediction: Prediction): { label: string; confidence: number; winner: boolean }[] {
  return prediction.top.map((t, i) => ({ label: t.label, confidence: t.confidence, winner: i === 0 && prediction.label === t.label }))
}

/** "https://x/a.jpg robin" or "robin, https://x/a.jpg" or a bare URL (then the default class). */
export function parseUrlLines(text: string, defaultLabel: string): { items: { url: string; label: string }[]; problems: string[] } {
  const items: { url: string; label: string }[] = []
  const problems: string[] = []
  for (const [i, raw] of text.split(/\r?\n/).entries()) {
    const line = raw.trim()
    if (!line || line.startsWith('#')) continue
    const parts = line.split(/[\s,;\t]+/).filter(Boolean)
    const url = parts.find((p) => /^https?:\/\//i.test(p))
    const label = parts.filter((p) => p !== url).join(' ').trim() || defaultLabel.trim()
    if (!url) problems.push(`Line ${i + 1} has no web address (it must start with http:// or https://).`)
    else if (!label) problems.push(`Line ${i + 1} has no class: add it after the address, or type a class above.`)
    else items.push({ url, label })
  }
  return { items, problems }
}

/** Whether a version keeps its training images' features, so a prediction can show the images it looks like. */
export function keepsNeighbours(lineage: Record<string, unknown> | null | undefined): boolean {
  return typeof lineage?.neighbours_key === 'string' && lineage.neighbours_key.length > 0
}
