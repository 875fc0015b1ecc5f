#!/usr/bin/env bash
# Check that a report renders in headless Chromium with no network: screenshot it and count the
# <svg>/<canvas> elements vega-embed produced in the live DOM.
# Usage: scripts/check_report_renders.sh REPORT.html [SCREENSHOT.png]
# Needs chromium (Debian: apt-get install -y chromium). Uses an empty network namespace when
# `unshare -n` is allowed, so a render that needed the network would fail here too.
set -euo pipefail

report=$(realpath "${1:?usage: $0 REPORT.html [SCREENSHOT.png]}")
shot=$(realpath -m "${2:-report.png}")
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT

offline=()
if unshare -n true 2>/dev/null; then
  offline=(unshare -n)
elif unshare -rn true 2>/dev/null; then
  offline=(unshare -rn)
else
  echo "warning: cannot make a network namespace; relying on Chromium flags only" >&2
fi

flags=(--headless --no-sandbox --disable-gpu --disable-quic --no-first-run
       --disable-background-networking --disable-component-update --disable-sync
       --user-data-dir="$profile" --window-size=1400,3000 --virtual-time-budget=15000)

"${offline[@]}" chromium "${flags[@]}" --screenshot="$shot" "file://$report" 2>/dev/null
dom=$("${offline[@]}" chromium "${flags[@]}" --dump-dom "file://$report" 2>/dev/null)

# Vega's SVG renderer marks its root with class "marks"; the canvas renderer makes a <canvas>.
count() { grep -o "$1" <<<"$dom" | wc -l || true; }  # grep fails on no match
svg=$(count '<svg[^>]*class="marks"')
canvas=$(count '<canvas')
echo "screenshot: $shot"
echo "vega svg views: $svg, canvas views: $canvas"
if [ "$svg" -eq 0 ] && [ "$canvas" -eq 0 ]; then
  echo "FAIL: no chart was rendered" >&2
  exit 1
fi
echo "OK: charts rendered"
