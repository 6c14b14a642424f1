#!/usr/bin/env bash
# Idempotent set-up for a fresh machine: system packages where we can (root + apt), then a
# virtual environment in .venv with the project and its test extras. Re-running is cheap: the
# pip step is skipped while pyproject.toml is unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '[setup] %s\n' "$*" >&2; }

# --- system packages (optional: the project runs without them, with reduced features) -------
want=()
[ -d /usr/share/datasets/fashion-mnist ] || want+=(dataset-fashion-mnist)
if [ "${ZOO_SETUP_BROWSER:-1}" = 1 ]; then
  command -v chromium >/dev/null 2>&1 || want+=(chromium)
  command -v chromedriver >/dev/null 2>&1 || want+=(chromium-driver)
fi
if [ ${#want[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    log "apt-get install ${want[*]}"
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${want[@]}" >/dev/null; }; then
      log "WARNING: could not install ${want[*]}; Fashion-MNIST will be looked up elsewhere, browser tests skip"
    fi
  else
    log "not root or no apt-get: skipping ${want[*]} (pass a Fashion-MNIST path or let the loader download it)"
  fi
fi

# --- python environment ------------------------------------------------------------------------
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  log "creating .venv"
  "$PY" -m venv .venv
fi
stamp=.venv/.zoo-installed
want_hash=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want_hash" ]; then
  log "installing the project into .venv (first time: torch, ray, mlflow; a few minutes)"
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null
  .venv/bin/python -m pip install -q -e ".[test]"
  echo "$want_hash" > "$stamp"
fi
# The torchvision trap (see DEVELOPERS.md): fail here, loudly, rather than in the middle of a job.
.venv/bin/python -c "import torch, torchvision; torchvision.models.resnet18(num_classes=2)" \
  || { log "torch/torchvision are broken in .venv (mismatched builds?); rm -rf .venv and re-run"; exit 1; }
log "ready: torch $(.venv/bin/python -c 'import torch; print(torch.__version__)')"
