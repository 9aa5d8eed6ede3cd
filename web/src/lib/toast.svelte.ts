// Short confirmations ("Token revoked") shown at the bottom of the screen and read by screen readers.
export interface Toast {
  id: number
  text: string
  kind: 'info' | 'error'
}

class Toasts {
  list = $state<Toast[]>([])
  private next = 1

  show(text: string, kind: Toast['kind'] = 'info', ms = 4000): void {
    const id = this.next++
    this.list.push({ id, text, kind })
    setTimeout(() => this.dismiss(id), ms)
  }

  dismiss(id: number): void {
    this.list = this.list.filter((t) => t.id !== id)
  }
}

export const toasts = new Toasts()
