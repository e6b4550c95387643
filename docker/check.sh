#!/usr/bin/env bash
# The container check in one command (README: Containers): the container tools from Debian's packages where they
# are missing (podman, buildah, mmdebstrap, docker-registry, ...; no daemon, no Docker Hub), then
#   image-emotion container-check
# which makes a Debian base, builds both images from the hashed lock, pushes them to a registry on 127.0.0.1,
# compiles the pipeline with the images named by digest, and runs the whole pipeline's components in the images
# (kfp.local.DockerRunner over podman's Docker API, uid 10001) against a tracking server over HTTP, ending with
# the registered models' champions. Run ./setup.sh first. Its options: image-emotion container-check --help.
set -euo pipefail
cd "$(dirname "$0")/.."
export MLFLOW_DISABLE_TELEMETRY=true DVC_NO_ANALYTICS=1
if [ ! -x .venv/bin/image-emotion ]; then
  echo "error: no .venv/bin/image-emotion; run ./setup.sh first" >&2
  exit 2
fi
read -r -a packages <<< "$(.venv/bin/python -c 'from image_emotion.kubeflow.builder import DEBIAN_PACKAGES as p; print(*p)')"
missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if [ "${#missing[@]}" -gt 0 ] && ! docker info >/dev/null 2>&1; then
  if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
    echo "error: missing ${missing[*]}; install them (sudo apt-get install ${missing[*]}) or start a Docker daemon" >&2
    exit 2
  fi
  echo "installing ${missing[*]} from Debian's packages"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
exec .venv/bin/image-emotion container-check "$@"
