#!/usr/bin/env bash
# Regenerates the admin UI screenshots the README shows (docs/screenshots/*.png): the browser
# test (tests/admin_ui.rs, ui/e2e/admin.spec.mjs) runs as usual against the real gateway with a
# real upstream and load, and with KAIROS_UI_SCREENSHOTS set it also saves a PNG of each view.
#
# Usage: scripts/screenshots.sh        (needs node, ui/node_modules and chromium, as the test)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

OUT="$ROOT/docs/screenshots"
mkdir -p "$OUT"
[ -d ui/node_modules/playwright-core ] || (cd ui && npm ci --no-audit --no-fund)
KAIROS_UI_SCREENSHOTS="$OUT" cargo test --test admin_ui admin_ui_in_chromium -- --nocapture
ls -l "$OUT"/*.png
