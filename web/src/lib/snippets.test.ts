import { describe, expect, it } from 'vitest'
import { cliSnippet, curlSnippet, pyString, pythonSnippet, shellQuote, TOKEN_PLACEHOLDER } from './snippets'

describe('API snippets', () => {
  it('quote for the shell and for Python', () => {
    expect(shellQuote('photo.jpg')).toBe('photo.jpg')
    expect(shellQuote('my photo.jpg')).toBe("'my photo.jpg'")
    expect(shellQuote("it's")).toBe(`'it'"'"'s'`)
    expect(pyString('a"b\\c')).toBe('"a\\"b\\\\c"')
  })

  it('curl posts a file to the real model with a bearer token', () => {
    const text = curlSnippet({ origin: 'http://127.0.0.1:8000/', modelId: '01abc' })
    expect(text).toBe(
      [
        "curl -X POST 'http://127.0.0.1:8000/api/v1/models/01abc/predict?top_k=3' \\",
        `  -H 'Authorization: Bearer ${TOKEN_PLACEHOLDER}' \\`,
        '  -F files=@photo.jpg',
      ].join('\n'),
    )
    expect(curlSnippet({ origin: 'https://x', modelId: 'm', token: 'pgh_real' })).toContain("'Authorization: Bearer pgh_real'")
  })

  it('Python uses pigeonhole.client.Client with the model id', () => {
    const text = pythonSnippet({ origin: 'https://pgh.example', modelId: '01abc', token: 'pgh_t' })
    expect(text).toContain('from pigeonhole.client import Client')
    expect(text).toContain('with Client("https://pgh.example", token="pgh_t") as pgh:')
    expect(text).toContain('pgh.predict("01abc", ["photo.jpg"])')
    expect(text).toContain('best["label"] or "unknown"')
  })

  it('the command line', () => {
    expect(cliSnippet({ origin: '', modelId: '01abc', image: 'a b.jpg' })).toBe("pigeonhole model predict 01abc 'a b.jpg'")
  })
})
