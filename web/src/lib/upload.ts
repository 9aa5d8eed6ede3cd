// Sending one file to a dataset with upload progress (fetch cannot report upload progress; XHR can).
import { cookieSource, csrfHeaders, toApiError, type Schemas } from './api/http'

export type UploadResult = Schemas['UploadResult']

export function sendFile(
  datasetId: string,
  file: Blob,
  name: string,
  label: string | null,
  onProgress: (loaded: number, total: number) => void,
  signal?: AbortSignal,
): Promise<UploadResult> {
  return new Promise((resolve, reject) => {
    const form = new FormData()
    form.append('files', file, name)
    if (label) form.append('label', label)
    const xhr = new XMLHttpRequest()
    xhr.open('POST', `/api/v1/datasets/${encodeURIComponent(datasetId)}/uploads`)
    xhr.withCredentials = true
    for (const [header, value] of Object.entries(csrfHeaders('POST', cookieSource()))) {
      xhr.setRequestHeader(header, value)
    }
    xhr.upload.onprogress = (event) => {
      if (event.lengthComputable) onProgress(event.loaded, event.total)
    }
    xhr.onload = () => {
      let body: unknown = null
      try {
        body = JSON.parse(xhr.responseText)
      } catch {
        body = null
      }
      if (xhr.status >= 200 && xhr.status < 300) resolve(body as UploadResult)
      else reject(toApiError(xhr.status, body))
    }
    xhr.onerror = () => reject(toApiError(0, null))
    xhr.onabort = () => reject(new DOMException('The upload was stopped.', 'AbortError'))
    signal?.addEventListener('abort', () => xhr.abort(), { once: true })
    xhr.send(form)
  })
}
