#!/usr/bin/env bash
# System packages for the browser test of `segearth serve`: Debian's Chromium, driven by Playwright
# (a Python test dependency) through executable_path=/usr/bin/chromium. `playwright install` is never
# run: it would download a browser of its own. Without Chromium the browser test is skipped.
set -euo pipefail
if ! [ -x /usr/bin/chromium ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update
  apt-get install -y --no-install-recommends chromium fonts-dejavu-core
fi
