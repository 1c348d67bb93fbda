"""The extension's files agree with each other: CMake lists, the .ui and the code, metadata, icons."""

from __future__ import annotations

import ast
import json
import re
import struct
import xml.etree.ElementTree as ElementTree
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODULE = REPO / "MRISuperRes"


def cmake_list(text: str, name: str) -> list[str]:
    body = re.search(rf"set\({name}\s+(.*?)\)", text, re.S).group(1)
    return [entry.replace("${MODULE_NAME}", "MRISuperRes") for entry in body.split()]


def test_module_cmake_lists_every_python_file_and_resource():
    text = (MODULE / "CMakeLists.txt").read_text()
    scripts, resources = cmake_list(text, "MODULE_PYTHON_SCRIPTS"), cmake_list(text, "MODULE_PYTHON_RESOURCES")
    python_files = {"MRISuperRes.py"} | {str(p.relative_to(MODULE)) for package in ("MRISuperResLib", "MRISuperResSlicer")
                                         for p in (MODULE / package).rglob("*.py")}
    resource_files = {str(p.relative_to(MODULE)) for p in (MODULE / "Resources").rglob("*") if p.is_file()}
    assert set(scripts) == python_files, "CMakeLists.txt MODULE_PYTHON_SCRIPTS differs from the files"
    assert set(resources) == resource_files, "CMakeLists.txt MODULE_PYTHON_RESOURCES differs from the files"
    assert "WITH_GENERIC_TESTS" in text and "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in text
    testing = (MODULE / "Testing" / "Python" / "CMakeLists.txt").read_text()
    for script in re.findall(r"SCRIPT \$\{CMAKE_CURRENT_SOURCE_DIR\}/(\S+)\)", testing):
        assert (MODULE / "Testing" / "Python" / script).is_file()


def test_extension_metadata():
    text = (REPO / "CMakeLists.txt").read_text()
    for field in ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION",
                  "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS"):
        assert re.search(rf'set\({field} "[^"]+"\)', text), field
    assert 'set(EXTENSION_DEPENDS "PyTorch")' in text
    assert "find_package(Slicer REQUIRED)" in text and "add_subdirectory(MRISuperRes)" in text
    category = re.search(r'set\(EXTENSION_CATEGORY "([^"]+)"\)', text).group(1)
    index = json.loads((REPO / "MRISuperRes.json").read_text())
    assert index["category"] == category and "PyTorch" in index["build_dependencies"]
    for url in re.search(r'set\(EXTENSION_SCREENSHOTURLS "([^"]+)"\)', text).group(1).split():
        assert (REPO / url.split("/main/", 1)[1]).is_file(), url
    icon_url = re.search(r'set\(EXTENSION_ICONURL "([^"]+)"\)', text).group(1)
    assert (REPO / icon_url.split("/main/", 1)[1]).is_file()


def png_size(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", header[16:24])


def test_icons_are_128_pixel_pngs():
    assert png_size(MODULE / "Resources" / "Icons" / "MRISuperRes.png") == (128, 128)
    assert png_size(REPO / "Resources" / "MRISuperRes.png") == (128, 128)


def test_ui_file_has_every_widget_the_code_uses_and_binds_only_real_parameters():
    ui = ElementTree.parse(MODULE / "Resources" / "UI" / "MRISuperRes.ui")
    widget_names = {w.get("name") for w in ui.iter("widget")}
    source = (MODULE / "MRISuperRes.py").read_text()
    used = set(re.findall(r"self\.ui\.(\w+)", source))
    assert used and used <= widget_names, f"missing in the .ui: {sorted(used - widget_names)}"
    tree = ast.parse(source)
    parameter_class = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "MRISuperResParameterNode")
    fields = {n.target.id for n in parameter_class.body if isinstance(n, ast.AnnAssign)}
    bound = {p.find("string").text for p in ui.iter("property") if p.get("name") == "SlicerParameterName"}
    assert bound and bound <= fields, f"bound to no parameter: {sorted(bound - fields)}"


def test_module_file_is_valid_python_with_the_four_slicer_classes():
    tree = ast.parse((MODULE / "MRISuperRes.py").read_text())
    classes = {n.name for n in tree.body if isinstance(n, ast.ClassDef)}
    assert {"MRISuperRes", "MRISuperResWidget", "MRISuperResLogic", "MRISuperResTest"} <= classes
    logic = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "MRISuperResLogic")
    process = next(n for n in logic.body if isinstance(n, ast.FunctionDef) and n.name == "process")
    names = [a.arg for a in process.args.args]
    assert names[:4] == ["self", "inputVolume", "referenceVolume", "outputVolume"]
    assert {"model", "targetSpacing", "device", "registerReference", "waitForCompletion", "progressCallback"} <= set(names)
