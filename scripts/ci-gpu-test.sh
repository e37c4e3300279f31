#!/usr/bin/env bash
# GPU-path equivalence tests without a GPU: burn's wgpu backend on Mesa's software Vulkan driver
# (lavapipe, Debian's mesa-vulkan-drivers). Installs the driver when it is missing (apt-get,
# non-interactive; as root, or through sudo), then builds train with its `wgpu` feature and runs
# the feature-gated test target `gpu_equivalence` (CubeCL kernels vs the CPU kernels and the
# burn-op references, on the Vulkan device `vulkan:cpu`).
#
# Usage: scripts/ci-gpu-test.sh [extra cargo test args, e.g. -- --nocapture]
# Environment: CARGO (default cargo); ASC_GPU_TEST_DEVICE (default vulkan:cpu, lavapipe; a
# machine with a GPU can name e.g. vulkan or cuda, the latter with ASC_GPU_TEST_FEATURES=cuda);
# ASC_GPU_TEST_FEATURES (default wgpu).
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO="${CARGO:-cargo}"
export ASC_GPU_TEST_DEVICE="${ASC_GPU_TEST_DEVICE:-vulkan:cpu}"
features="${ASC_GPU_TEST_FEATURES:-wgpu}"

# The Vulkan ICD of lavapipe (file name differs per architecture: lvp_icd.x86_64.json, ...).
lavapipe_icd() {
    ls /usr/share/vulkan/icd.d/lvp_icd.*.json 2>/dev/null | head -n 1
}

if [[ "$ASC_GPU_TEST_DEVICE" == *:cpu && -z "$(lavapipe_icd)" ]]; then
    echo "ci-gpu-test: installing Mesa's software Vulkan driver (mesa-vulkan-drivers)" >&2
    if [[ "$(id -u)" -eq 0 ]]; then
        as_root=()
    elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
        as_root=(sudo -n)
    else
        echo "ci-gpu-test: lavapipe is missing and this user cannot install packages; run" >&2
        echo "  sudo apt-get install -y mesa-vulkan-drivers" >&2
        exit 1
    fi
    if ! command -v apt-get >/dev/null; then
        echo "ci-gpu-test: lavapipe is missing and there is no apt-get (not Debian/Ubuntu); install" >&2
        echo "  Mesa's Vulkan drivers (lavapipe, lvp_icd.*.json) and the Vulkan loader" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    # Error-Mode=any: apt-get update exits 0 when an index fails to download (it only warns);
    # older apt ignores the option, and the install below then fails on the missing package.
    if ! "${as_root[@]}" apt-get update -qq -o APT::Update::Error-Mode=any; then
        echo "ci-gpu-test: apt-get update failed (see above): the Debian package index is" >&2
        echo "  unreachable, so lavapipe (mesa-vulkan-drivers) cannot be installed" >&2
        exit 1
    fi
    if ! "${as_root[@]}" apt-get install -y -qq --no-install-recommends \
        mesa-vulkan-drivers libvulkan1 >/dev/null; then
        echo "ci-gpu-test: apt-get install mesa-vulkan-drivers libvulkan1 failed (see above)" >&2
        exit 1
    fi
    if [[ -z "$(lavapipe_icd)" ]]; then
        echo "ci-gpu-test: mesa-vulkan-drivers installed no lavapipe ICD under /usr/share/vulkan/icd.d" >&2
        exit 1
    fi
fi

if [[ "$ASC_GPU_TEST_DEVICE" == *:cpu ]]; then
    # Only lavapipe: the loader would otherwise also load the hardware ICDs of the package
    # (Intel, Radeon), which only print warnings on a machine without such a GPU.
    icd="$(lavapipe_icd)"
    export VK_DRIVER_FILES="$icd" VK_ICD_FILENAMES="$icd"
fi
# Mesa warns on every start without a runtime directory.
if [[ -z "${XDG_RUNTIME_DIR:-}" ]]; then
    XDG_RUNTIME_DIR="$(mktemp -d)"
    chmod 700 "$XDG_RUNTIME_DIR"
    export XDG_RUNTIME_DIR
fi

exec "$CARGO" test --release -p train --features "$features" --test gpu_equivalence "$@"
