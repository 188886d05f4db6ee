#!/usr/bin/env bash
# System tools the MCP worker and its tests use, beyond the Python dependencies
# (run by `make setup`; idempotent, and quick when everything is in place):
#   - bubblewrap (`bwrap`), the sandbox for stdio MCP servers, and kcat, the command-line
#     Kafka client the end-to-end tests produce with: from Debian with apt-get, only when
#     missing and we are root with apt-get; otherwise a note. Also Prometheus and promtool
#     (Debian's prometheus package; its service is not started), for the alert-rule,
#     dashboard and scrape tests, and redis-server (the LLM worker's shared response cache).
#   - the reference MCP servers from npm (server-everything, server-filesystem), at the
#     versions pinned in tools/node/package.json + package-lock.json, into
#     tools/node/node_modules: installed once with `npm ci`, spawned by their bin path.
#     Never `npx`: with no network it hangs instead of failing.
set -euo pipefail
cd "$(dirname "$0")/.."

NODE_DIR=tools/node

note() { echo "setup_system: $*" >&2; }

APT_UPDATED=0

# install_debian COMMAND PACKAGE WHY: install PACKAGE when COMMAND is missing.
install_debian() {
    local command=$1 package=$2 why=$3
    if command -v "$command" >/dev/null 2>&1; then
        return
    fi
    if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
        note "$command is missing and cannot be installed here (needs root and apt-get);" \
            "$why. Install it with: apt-get install $package"
        return
    fi
    note "installing $package with apt-get"
    if [[ $APT_UPDATED -eq 0 ]]; then
        apt-get update -qq
        APT_UPDATED=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$package" >/dev/null
}

# Exit status 0 when every dependency of package.json is installed at its exact version.
node_servers_installed() {
    node -e '
        const path = require("path");
        const dir = path.resolve(process.argv[1]);
        const wanted = require(path.join(dir, "package.json")).dependencies;
        for (const [name, version] of Object.entries(wanted)) {
            let installed;
            try {
                installed = require(path.join(dir, "node_modules", name, "package.json")).version;
            } catch {
                process.exit(1);
            }
            if (installed !== version) process.exit(1);
        }
    ' "$NODE_DIR"
}

install_node_servers() {
    if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
        note "node/npm are missing: the npm MCP servers (tests/integration/test_mcp_servers.py)" \
            "cannot be installed. Install Node.js 20+ with npm, then run make setup again."
        return
    fi
    if node_servers_installed; then
        return
    fi
    note "installing the npm MCP servers into $NODE_DIR/node_modules"
    npm ci --prefix "$NODE_DIR" --no-audit --no-fund --loglevel=error >/dev/null
}

install_debian bwrap bubblewrap "the MCP worker cannot sandbox stdio servers"
install_debian kcat kcat "the kcat end-to-end tests are skipped"
install_debian promtool prometheus "the alert-rule, dashboard and Prometheus scrape tests are skipped"
install_debian redis-server redis-server "the shared response-cache tests cannot run"
install_node_servers
