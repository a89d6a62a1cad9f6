"""What the Comfy Registry and ComfyUI's template browser read from the pack, checked with ComfyUI's own parser."""

from __future__ import annotations

import re
import sys
import tomllib

import pytest
from PIL import Image

from conftest import REPO

sys.path.insert(0, str(REPO / "scripts"))
from host import comfy_dir  # noqa: E402


@pytest.fixture(scope="module")
def config():
    """pyproject.toml as ComfyUI's comfy_config parser (the registry's schema) reads it."""
    sys.path.insert(0, str(comfy_dir()))
    from comfy_config.config_parser import extract_node_configuration

    parsed = extract_node_configuration(str(REPO))  # the pack folder, as ComfyUI passes it
    assert parsed is not None
    return parsed


def test_the_registry_fields_follow_its_specification(config):
    """docs.comfy.org/registry/specifications: the node id without 'ComfyUI', alphanumerics and single separators,
    not starting with a digit or a separator; X.Y.Z; a repository; the publisher, display name and icon."""
    name = config.project.name
    assert len(name) < 100 and "comfyui" not in name.lower()
    assert re.fullmatch(r"[A-Za-z][A-Za-z0-9]*([-_.][A-Za-z0-9]+)*", name), name
    assert re.fullmatch(r"\d+\.\d+\.\d+", config.project.version)
    assert config.project.urls.repository.startswith("https://github.com/") and config.project.urls.issues
    assert config.project.license.text == "Apache-2.0"
    comfy = config.tool_comfy
    assert comfy.publisher_id and comfy.display_name
    assert config.project.supported_comfyui_version == ">=0.3.75"  # the V3 node API the pack uses
    assert config.project.supported_os == ["OS Independent"]
    assert config.project.supported_accelerators == ["GPU :: NVIDIA CUDA"]


def test_the_icon_is_in_the_repository_where_its_url_points():
    comfy = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["comfy"]
    path = comfy["Icon"].split("/main/", 1)[1]
    with Image.open(REPO / path) as icon:
        assert icon.format == "PNG" and icon.size[0] == icon.size[1] >= 128


def test_dependencies_leave_torch_to_comfyui_and_match_requirements():
    """ComfyUI brings torch (a pack that lists it can make installers replace the user's CUDA build)."""
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    lines = [line.split("#")[0].strip() for line in (REPO / "requirements.txt").read_text().splitlines()]
    assert not any(d.startswith("torch") and not d.startswith("torchao") for d in deps)
    assert sorted(deps) == sorted(line for line in lines if line)


@pytest.mark.parametrize("workflow", sorted((REPO / "workflows").glob("*.json")), ids=lambda p: p.stem)
def test_every_shipped_workflow_has_a_thumbnail(workflow):
    """The template browser shows <name>.jpg beside <name>.json (served under /api/workflow_templates/<pack>/)."""
    with Image.open(workflow.with_suffix(".jpg")) as thumb:
        assert thumb.format == "JPEG" and thumb.size == (640, 360)
