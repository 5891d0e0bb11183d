"""Refuse to release a tag that is not the version of everything it publishes.

    python tools/check_release.py v0.2.0

The tag vX.Y.Z must equal the package's version (authz/__init__.py, the wheel's and the
image's), the chart's version and appVersion, and the tag of the default image of the chart
and of the plain manifests (kustomize base, Istio), so `helm install` of chart X.Y.Z pulls
image X.Y.Z, and that image is the one this tag builds.
Exits 1 naming each file that disagrees and what to set there.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "deploy" / "k8s" / "helm" / "mcp-authz"
# The plain manifests that name our image, each checked on its own.
MANIFESTS = (
    Path("deploy") / "k8s" / "base" / "deployment.yaml",
    Path("deploy") / "istio" / "mcp-authz.yaml",
)
IMAGE = "ghcr.io/mcp-authz/mcp-authz"
TAG = re.compile(r"^v(\d+\.\d+\.\d+)$")


def versions(root: Path = ROOT) -> dict[str, str]:
    """Where a version is written, and what it says."""
    init = (root / "authz" / "__init__.py").read_text()
    found = re.search(r'^__version__ = "([^"]+)"$', init, flags=re.MULTILINE)
    chart_dir = root / CHART.relative_to(ROOT)
    chart = yaml.safe_load((chart_dir / "Chart.yaml").read_text())
    values = yaml.safe_load((chart_dir / "values.yaml").read_text())
    found_versions = {
        "authz/__init__.py __version__": found[1] if found else "",
        "Chart.yaml version": str(chart["version"]),
        "Chart.yaml appVersion": str(chart["appVersion"]),
        "values.yaml image.tag": str(values["image"]["tag"]),
    }
    for manifest in MANIFESTS:
        text = (root / manifest).read_text()
        tags = sorted(set(re.findall(rf"image: {re.escape(IMAGE)}:(\S+)", text)))
        found_versions[f"{manifest.as_posix()} images"] = ",".join(tags)
    return found_versions


def problems(tag: str, root: Path = ROOT) -> list[str]:
    match = TAG.match(tag)
    if not match:
        return [f"tag {tag!r} is not vX.Y.Z"]
    wanted = match[1]
    return [
        f"{where} is {have!r}: set it to {wanted!r} for tag {tag}"
        for where, have in versions(root).items()
        if have != wanted
    ]


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: check_release.py vX.Y.Z", file=sys.stderr)
        return 2
    found = problems(argv[0])
    for problem in found:
        print(f"check_release: {problem}", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
