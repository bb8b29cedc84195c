#!/usr/bin/env bash
# Everything the real-cluster tests import into containerd (what `make image` runs): the Debian packages,
# the stand-in base image, the pause image, the agent image and the emulator image. Each part is cached
# on its own.
#
#   scripts/image/all.sh   -> prints the three archive paths on stdout (pause, the agent, the emulator)
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

t_all="$(now)"
step "deps.sh" "$image_dir/deps.sh"
step "base.sh" "$image_dir/base.sh"
step "pause.sh" "$image_dir/pause.sh"
step "build.sh" "$image_dir/build.sh" "$@"
step "build.sh --target emulator" "$image_dir/build.sh" --target emulator "$@"
log "all: images ready in $(since "$t_all") s"
echo "$images_cache/pause.tar"
echo "$images_cache/modelarts-agent.tar"
echo "$images_cache/modelarts-emulator.tar"
