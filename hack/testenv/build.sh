#!/usr/bin/env bash
# Build (or reuse from the cache) the real test components. The builder ships inside the package
# so that `aioreconcile testenv up` can build them too; this is the entry point for people and CI.
exec "$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/aioreconcile/testing/toolchain/build.sh" "$@"
