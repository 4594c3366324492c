#!/usr/bin/env bash
# Copies the admin UI's front-end libraries (pinned in package.json + package-lock.json) from node_modules into
# admin_ui/static/vendor/, with their licences. The copies are committed: `pip install` ships a working UI and
# nothing is fetched at run time. Run through `make vendor` after changing a version.
set -euo pipefail
cd "$(dirname "$0")/.."
npm ci --no-audit --no-fund --ignore-scripts
out=admin_ui/static/vendor
rm -rf "$out"
mkdir -p "$out/licenses"
# Preact + hooks + htm in one ES module: no bare imports, so no import map (which CSP would make inline).
cp node_modules/htm/preact/standalone.module.js "$out/preact-htm.js"
cp node_modules/cytoscape/dist/cytoscape.esm.min.mjs "$out/cytoscape.js"
cp node_modules/uplot/dist/uPlot.esm.js "$out/uplot.js"
cp node_modules/uplot/dist/uPlot.min.css "$out/uplot.css"
for pkg in htm preact cytoscape uplot; do  # preact: bundled in htm's standalone build
  cp "node_modules/$pkg/LICENSE" "$out/licenses/$pkg.LICENSE"
done
node -e '
const lock = require("./package-lock.json");
const versions = {};
for (const name of ["htm", "preact", "cytoscape", "uplot"]) versions[name] = lock.packages["node_modules/" + name].version;
process.stdout.write(JSON.stringify(versions, null, 2) + "\n");
' > "$out/versions.json"
echo "vendored into $out: $(tr -d '\n ' < "$out/versions.json")"
