#!/usr/bin/env python3
"""Renders a Helm chart offline with Helm v4's own engine (PyPI's helm-python-sdk, which
bundles it as a library: no helm binary, no cluster) and lints it.

    helm_render.py CHART_DIR OUT_DIR [VALUES_JSON]

Writes each rendered template to OUT_DIR/<template file name> (templates that render to
nothing are left out), like `helm template --values`; exits 1 when the chart does not render
or `helm lint --strict` reports a warning or an error. tests/deploy_manifests.rs runs it with
the tools virtualenv's python (scripts/test.sh installs the package there).
"""

import json
import os
import sys

from helm_python.chart import Chart, lint


def main() -> int:
    if len(sys.argv) not in (3, 4):
        print(__doc__, file=sys.stderr)
        return 2
    chart_dir, out_dir = sys.argv[1], sys.argv[2]
    values = json.loads(sys.argv[3]) if len(sys.argv) == 4 else None
    report = lint(chart_dir, values, strict=True)
    problems = [m for m in report.get("messages", []) if m.get("severity", 0) >= 2]
    if problems or report.get("errors"):
        print(json.dumps(report, indent=2), file=sys.stderr)
        return 1
    rendered = Chart.load(chart_dir).render(
        values, name="kairos-rs", namespace="default", is_install=True
    )
    os.makedirs(out_dir, exist_ok=True)
    for path, text in sorted(rendered.items()):
        if not path.endswith(".yaml") or not text.strip():
            continue
        with open(os.path.join(out_dir, os.path.basename(path)), "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
