// Ready-to-paste code for the "Use the API" panel.

/** Quote a string for a POSIX shell. */
export function shellQuote(value: string): string {
  return /^[\w@%+=:,./-]+$/.test(value) ? value : `'${value.replaceAll("'", `'"'"'`)}'`
}

/** Quote a string as a Python literal. */
export function pyString(value: string): string {
  return `"${value.replaceAll('\\', '\\\\').replaceAll('"', '\\"').replaceAll('\n', '\\n')}"`
}

export interface SnippetInput {
  origin: string
  modelId: string
  /** A real token if the user just made one; else a placeholder. */
  token?: string | null
  image?: string
}

export const TOKEN_PLACEHOLDER = 'pgh_YOUR_TOKEN'

export function curlSnippet({ origin, modelId, token, image = 'photo.jpg' }: SnippetInput): string {
  const url = `${origin.replace(/\/+$/, '')}/api/v1/models/${encodeURIComponent(modelId)}/predict?top_k=3`
  return [
    `curl -X POST ${shellQuote(url)} \\`,
    `  -H ${shellQuote(`Authorization: Bearer ${token || TOKEN_PLACEHOLDER}`)} \\`,
    `  -F ${shellQuote(`files=@${image}`)}`,
  ].join('\n')
}

export function pythonSnippet({ origin, modelId, token, image = 'photo.jpg' }: SnippetInput): string {
  return [
    'from pigeonhole.client import Client',
    '',
    `with Client(${pyString(origin.replace(/\/+$/, ''))}, token=${pyString(token || TOKEN_PLACEHOLDER)}) as pgh:`,
    `    answer = pgh.predict(${pyString(modelId)}, [${pyString(image)}])`,
    '    best = answer["predictions"][0]',
    '    print(best["label"] or "unknown", best["confidence"])',
  ].join('\n')
}

export function cliSnippet({ modelId, image = 'photo.jpg' }: SnippetInput): string {
  return `pigeonhole model predict ${shellQuote(modelId)} ${shellQuote(image)}`
}
