// The admin UI is served by the gateway at /_kairos/admin/ from files embedded at compile time.
// Hashed names under assets/ (cached as immutable), no inline scripts or styles (the CSP forbids
// them), no module preload polyfill (it would be an inline script), one JS chunk and one CSS file.
import { defineConfig } from 'vite';
import react from '@vitejs/plugin-react';

export default defineConfig({
  base: '/_kairos/admin/',
  plugins: [react()],
  build: {
    outDir: 'dist',
    emptyOutDir: true,
    assetsDir: 'assets',
    assetsInlineLimit: 0,
    modulePreload: { polyfill: false },
    sourcemap: false,
    target: 'es2022',
    reportCompressedSize: false,
  },
});
