# Sourced by ./run and .ci/run. Installs the pinned Node from the npm registry (the `node` package
# ships the binary) into a git-ignored folder when the machine's Node is not the pinned one, and
# runs `npm ci` when node_modules is missing or older than the lockfile.
NODE_VERSION=24.21.0
TOOLS_DIR="$PWD/.tools/node-$NODE_VERSION"

ensure_node() {
  if [ "$(node -v 2>/dev/null || true)" != "v$NODE_VERSION" ]; then
    if [ ! -x "$TOOLS_DIR/bin/node" ]; then
      echo "toolchain: installing node@$NODE_VERSION into .tools/ (machine has $(node -v 2>/dev/null || echo none))" >&2
      npm install --global --no-fund --no-audit --loglevel=error --prefix "$TOOLS_DIR" "node@$NODE_VERSION" >&2
    fi
    export PATH="$TOOLS_DIR/bin:$PATH"
  fi
  local got
  got=$(node -v)
  if [ "$got" != "v$NODE_VERSION" ]; then
    echo "toolchain: expected node v$NODE_VERSION, got $got" >&2
    return 1
  fi
}

ensure_deps() {
  if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
    echo "toolchain: npm ci" >&2
    npm ci --no-fund --no-audit --loglevel=error >&2
  fi
}
