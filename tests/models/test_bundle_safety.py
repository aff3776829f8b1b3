"""A damaged or inconsistent bundle is refused at load time with a message naming the file."""

import json
import shutil

import pytest
from typer.testing import CliRunner

from oncolens.apps.cli import app
from oncolens.errors import BundleError
from oncolens.models import load_any_bundle


@pytest.fixture()
def copy_of(tmp_path):
    def make(source):
        return shutil.copytree(source, tmp_path / "b")
    return make


def edit_json(path, change):
    info = json.loads(path.read_text())
    change(info)
    path.write_text(json.dumps(info))


@pytest.mark.parametrize("change, message", [
    (lambda info: info.update(classes=info["classes"][:-1]), "3 classes listed for a model with 4 outputs"),
    (lambda info: info.update(classes=[1, 2, 3, 4]), "list of non-empty strings"),
    (lambda info: info.update(classes="histo_normal"), "list of non-empty strings"),
    (lambda info: info.update(classes=["a", "a", "b", "c"]), "repeated"),
    (lambda info: info.pop("model"), "missing or malformed field 'model'"),
    (lambda info: info["model"].pop("num_classes"), "missing or malformed field"),
])
def test_inconsistent_flat_bundle_is_refused(copy_of, tiny_bundle, change, message):
    folder = copy_of(tiny_bundle)
    edit_json(folder / "bundle.json", change)
    with pytest.raises(BundleError, match=message) as caught:
        load_any_bundle(folder)
    assert str(folder) in str(caught.value)


def test_damaged_files_name_themselves(copy_of, tiny_bundle):
    folder = copy_of(tiny_bundle)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(BundleError, match="model.safetensors"):
        load_any_bundle(folder)
    weights.write_bytes(b"")
    with pytest.raises(BundleError, match="model.safetensors"):
        load_any_bundle(folder)
    (folder / "bundle.json").write_text("{not json")
    with pytest.raises(BundleError, match=r"bundle.json: not valid JSON"):
        load_any_bundle(folder)


def test_hierarchical_classes_must_match_the_leaves(copy_of, hierarchical_bundle):
    folder = copy_of(hierarchical_bundle)
    edit_json(folder / "bundle.json", lambda info: info.update(classes=info["classes"][:-1]))
    with pytest.raises(BundleError, match="do not match the tree's leaves"):
        load_any_bundle(folder)


def test_cli_refuses_a_bad_bundle_in_one_line(copy_of, tiny_bundle, phantom_manifest):
    folder = copy_of(tiny_bundle)
    edit_json(folder / "bundle.json", lambda info: info.update(classes=info["classes"][:-1]))
    for command in (["predict", str(folder), phantom_manifest["path"][0]],
                    ["explain", str(folder), phantom_manifest["path"][0]]):
        result = CliRunner().invoke(app, command)
        assert result.exit_code == 2 and "Traceback" not in result.output and "3 classes listed" in result.output
