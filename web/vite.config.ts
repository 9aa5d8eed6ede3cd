import { svelte } from '@sveltejs/vite-plugin-svelte'
import { defineConfig } from 'vitest/config'

// The build goes straight into the Python package, which serves it at / (see src/pigeonhole/api/web.py).
export default defineConfig({
  plugins: [svelte()],
  build: {
    outDir: '../src/pigeonhole/web_dist',
    emptyOutDir: true,
    assetsDir: 'assets',
  },
  server: {
    // `npm run dev` talks to a local `pigeonhole serve` (default port 8000).
    proxy: { '/api': process.env.PIGEONHOLE_URL ?? 'http://127.0.0.1:8000' },
  },
  test: {
    include: ['src/**/*.test.ts'],
    environment: 'node',
  },
})
