#!/usr/bin/env bash
# System packages the tests need beyond pip: Xvfb + Mesa for the DearPyGui window,
# libXtst for synthetic input, Chromium + ChromeDriver for the browser test. Installed only when missing.
set -euo pipefail
need=()
command -v Xvfb >/dev/null 2>&1 || need+=(xvfb)
[ -e /usr/lib/x86_64-linux-gnu/libGL.so.1 ] || need+=(libgl1 libgl1-mesa-dri)
# XTest sends real pointer and key events to the window in tests/test_desktop_ui.py.
[ -e /usr/lib/x86_64-linux-gnu/libXtst.so.6 ] || need+=(libxtst6)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
if [ ${#need[@]} -eq 0 ]; then exit 0; fi
if [ "$(id -u)" -ne 0 ]; then
    echo "system_deps: missing ${need[*]}; run as root or install them (apt-get install -y ${need[*]})" >&2
    echo "system_deps: the window and browser tests will be skipped" >&2
    exit 0
fi
echo "system_deps: installing ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
