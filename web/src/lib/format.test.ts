import { describe, expect, it } from 'vitest'
import { formatBytes, formatCount, formatDay, formatDuration, formatMs, formatPercent, plural, timeAgo } from './format'
import { errorRate, fillDays, lastDays, niceScale } from './usage'
import { matchRoute, safeNext } from './routes'

describe('formatting', () => {
  it('counts with the right word', () => {
    expect(plural(1, 'image')).toBe('1 image')
    expect(plural(0, 'image')).toBe('0 images')
    expect(plural(2, 'class', 'classes')).toBe('2 classes')
    expect(formatCount(12345)).toBe('12,345')
  })

  it('sizes, percentages and durations', () => {
    expect(formatBytes(512)).toBe('512 B')
    expect(formatBytes(1500)).toBe('1.5 kB')
    expect(formatBytes(2_000_000)).toBe('2 MB')
    expect(formatBytes(345_600_000)).toBe('346 MB')
    expect(formatBytes(-1)).toBe('–')
    expect(formatPercent(0.1667, 1)).toBe('16.7 %')
    expect(formatMs(null)).toBe('–')
    expect(formatMs(4.25)).toBe('4.3 ms')
    expect(formatMs(250.4)).toBe('250 ms')
    expect(formatMs(1530)).toBe('1.53 s')
    expect(formatDuration(3)).toBe('a few seconds')
    expect(formatDuration(42.4)).toBe('42 seconds')
    expect(formatDuration(150)).toBe('about 3 minutes')
    expect(formatDuration(3600)).toBe('about 1 hour')
    expect(formatDuration(4900)).toBe('about 1 hour 22 minutes')
    expect(formatDuration(null)).toBe('–')
  })

  it('times relative to now', () => {
    const now = new Date('2026-11-25T12:00:00Z')
    expect(timeAgo(null, now)).toBe('never')
    expect(timeAgo('2026-11-25T11:59:40Z', now)).toBe('just now')
    expect(timeAgo('2026-11-25T11:55:00Z', now)).toBe('5 minutes ago')
    expect(timeAgo('2026-11-25T09:00:00Z', now)).toBe('3 hours ago')
    expect(timeAgo('2026-11-24T12:00:00Z', now)).toBe('yesterday')
    expect(timeAgo('2026-11-28T12:00:00Z', now)).toBe('in 3 days')
    expect(timeAgo('not a date', now)).toBe('–')
    expect(formatDay('2026-11-05')).toBe('5 Nov')
  })
})

describe('usage chart data', () => {
  it('fills the days without calls with zeros', () => {
    const days = fillDays('2026-02-27', '2026-03-02', [
      { key: '2026-02-28', calls: 5, errors: 1 },
      { key: '2026-03-02', calls: 2, errors: 0 },
    ])
    expect(days.map((d) => [d.day, d.calls, d.errors])).toEqual([
      ['2026-02-27', 0, 0],
      ['2026-02-28', 5, 1],
      ['2026-03-01', 0, 0],
      ['2026-03-02', 2, 0],
    ])
  })

  it('picks round axis ticks', () => {
    expect(niceScale(0)).toEqual({ max: 1, ticks: [0, 1] })
    expect(niceScale(6)).toEqual({ max: 6, ticks: [0, 2, 4, 6] })
    expect(niceScale(37)).toEqual({ max: 40, ticks: [0, 10, 20, 30, 40] })
    expect(niceScale(1234).max).toBeGreaterThanOrEqual(1234)
  })

  it('ranges and rates', () => {
    expect(lastDays(7, new Date('2026-03-02T23:00:00Z'))).toEqual({ from: '2026-02-24', to: '2026-03-02' })
    expect(errorRate(0, 0)).toBe(0)
    expect(errorRate(4, 1)).toBe(0.25)
  })
})

describe('routes', () => {
  it('maps paths to pages', () => {
    expect(matchRoute('/')).toEqual({ page: 'home' })
    expect(matchRoute('/datasets/')).toEqual({ page: 'datasets' })
    expect(matchRoute('/datasets/01abc')).toEqual({ page: 'dataset', id: '01abc' })
    expect(matchRoute('/datasets/01abc/review')).toEqual({ page: 'review', id: '01abc' })
    expect(matchRoute('/datasets/01abc/label')).toEqual({ page: 'label', id: '01abc' })
    expect(matchRoute('/tokens')).toEqual({ page: 'tokens' })
    expect(matchRoute('/datasets/a/b')).toEqual({ page: 'notfound' })
    expect(matchRoute('/nope')).toEqual({ page: 'notfound' })
    expect(matchRoute('/models/new')).toEqual({ page: 'newmodel' })
    expect(matchRoute('/models/01m')).toEqual({ page: 'model', id: '01m', tab: 'overview' })
    expect(matchRoute('/models/01m/try')).toEqual({ page: 'model', id: '01m', tab: 'try' })
    expect(matchRoute('/models/01m/api/')).toEqual({ page: 'model', id: '01m', tab: 'api' })
    expect(matchRoute('/models/01m/overview')).toEqual({ page: 'notfound' })
    expect(matchRoute('/models/01m/nope')).toEqual({ page: 'notfound' })
  })

  it('only returns to pages of this app after sign-in', () => {
    expect(safeNext('/usage?x=1')).toBe('/usage?x=1')
    expect(safeNext('https://evil.example')).toBe('/')
    expect(safeNext('//evil.example')).toBe('/')
    expect(safeNext('/api/v1/me')).toBe('/')
    expect(safeNext('/signin')).toBe('/')
    expect(safeNext(null)).toBe('/')
  })
})
