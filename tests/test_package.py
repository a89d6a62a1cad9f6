"""What the Comfy Registry and ComfyUI's template browser read from the pack, checked with ComfyUI's own parser."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
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


def run_python(code: str) -> str:
    """Runs code in a fresh CPU process with ComfyUI and the repository importable (as on the GPU machine): its
    output."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(comfy_dir()), str(REPO)]), "TRITON_INTERPRET": "1",
           "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


IMPORT_AS = """
    import importlib.util, pathlib, sys

    def import_as(name, init):
        spec = importlib.util.spec_from_file_location(name, init, submodule_search_locations=[str(init.parent)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        return module
"""


def test_the_pack_imported_outside_comfyui_loads_no_node_and_no_second_engine():
    """pytest imports the repository's __init__.py as a package (here `main`) beside the tests' `longlive_core`; with
    ComfyUI importable that loaded the nodes and a second engine, whose torch ops replaced the first's (freed under
    it: the GPU tests failed with `vector::reserve` or crashed)."""
    out = run_python(IMPORT_AS + """
    import longlive_core
    pack = import_as("main", pathlib.Path("__init__.py").resolve())
    print(pack.comfy_entrypoint, sorted(m for m in sys.modules if m.startswith("main.") or m.split(".")[0] == "comfy"))
    """)
    assert out.split() == ["None", "[]"]


def test_a_second_copy_of_the_engine_is_refused_and_the_first_keeps_working():
    out = run_python(IMPORT_AS + """
    import torch
    from longlive_core.kernels import ops
    try:
        import_as("engine_copy", pathlib.Path("longlive_core/__init__.py").resolve())
    except ImportError as error:  # the copy's own EngineLoadedTwiceError class
        print(type(error).__name__, error)
    x, a, b = torch.randn(2, 5, 16), torch.randn(16), torch.randn(16)
    want = torch.nn.functional.layer_norm(x, (16,), eps=1e-6) * a + b
    print("first copy error", (ops.norm_affine(x, a, b, 1e-6, False) - want).abs().max().item())
    """)
    message, error = out.strip().rsplit("\n", 1)
    assert message.startswith("EngineLoadedTwiceError the torch op longlive::")
    assert "loaded twice in this process (engine_copy, longlive_core)" in message
    assert "Import the engine once" in message
    assert float(error.split()[-1]) < 1e-5


def test_without_chromium_the_browser_test_skips_and_says_why(tmp_path):
    """Where scripts/test.sh could not install Chromium (not root, no network), the browser test skips with the
    reason, unless LONGLIVE_REQUIRE_BROWSER (CI) says it must run."""
    env = {k: v for k, v in os.environ.items() if k != "LONGLIVE_REQUIRE_BROWSER"}
    env["PATH"] = str(tmp_path)  # no chromium on it
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
                           "tests/test_browser.py"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 5 and "1 skipped" in done.stdout, done.stdout[-2000:]  # 5: a module skipped, no test
    assert "no chromium on this machine (scripts/test.sh installs Debian's with apt-get" in done.stdout
