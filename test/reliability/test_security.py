"""Only safetensors and plain data are ever loaded; paths are checked before they are read.

The scan walks the syntax tree of every module in the package (comments and strings that mention
torch.load, like the conversion hint, are not code) and fails on any call that can execute code
from data: pickle and friends, torch.load, eval/exec, yaml.load without SafeLoader.
"""

from __future__ import annotations

import ast
import os
import shutil
from pathlib import Path
from typing import List

import pytest

from pi0_ttnn_node.bounded_files import MAX_METADATA_BYTES, read_small_text
from pi0_ttnn_node.checkpoint import load_checkpoint
from pi0_ttnn_node.embedded import ensure_embedded_checkpoint
from pi0_ttnn_node.errors import CheckpointError, ConfigError, TokenizerError
from pi0_ttnn_node.policy import Pi0Policy, PolicyConfig

REPO = Path(__file__).resolve().parents[2]
SCANNED = [REPO / "pi0_ttnn_node", REPO / "launch"]
UNSAFE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "marshal", "shelve",
                  "joblib"}
UNSAFE_CALLS = {"eval", "exec", "torch.load", "torch.jit.load", "yaml.unsafe_load",
                "yaml.full_load", "numpy.load", "np.load", "pandas.read_pickle"}


def dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{dotted(node.value)}.{node.attr}"
    return ""


def unsafe_uses(source: str, filename: str) -> List[str]:
    """Lines of `source` that import an unpickler or call a code-executing loader."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        where = f"{filename}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] + ([node.module] if getattr(node, "module", None)
                                                    else [])
            hits = [n for n in names if n.split(".")[0] in UNSAFE_MODULES]
            if hits:
                found.append(f"{where} imports {hits}")
        elif isinstance(node, ast.Call):
            name = dotted(node.func)
            if name in UNSAFE_CALLS:
                found.append(f"{where} calls {name}")
            elif name.endswith("yaml.load"):
                loader = {k.arg: dotted(k.value) for k in node.keywords}.get("Loader", "")
                if "SafeLoader" not in loader:
                    found.append(f"{where} calls yaml.load without SafeLoader")
    return found


def package_sources():
    for root in SCANNED:
        if root.is_dir():
            yield from sorted(root.rglob("*.py"))


def test_scanner_flags_each_unsafe_pattern():
    snippet = ("import pickle\nimport torch, yaml\nfrom dill import loads\ntorch.load('x')\n"
               "eval('1')\nexec('pass')\nyaml.load(s)\nyaml.load(s, Loader=yaml.SafeLoader)\n"
               "x = 'torch.load(path)'  # torch.load in a string is fine\n")
    hits = unsafe_uses(snippet, "snippet.py")
    assert [h.split(" ", 1)[1] for h in hits] == [
        "imports ['pickle']", "imports ['dill']", "calls torch.load", "calls eval",
        "calls exec", "calls yaml.load without SafeLoader"]


def test_package_never_unpickles_evaluates_or_yaml_loads_unsafely():
    files = list(package_sources())
    assert len(files) > 20, "the scan found too few modules; check SCANNED"
    hits = [h for f in files for h in unsafe_uses(f.read_text(), str(f.relative_to(REPO)))]
    assert hits == []


# ---- path checks ------------------------------------------------------------------------------
@pytest.fixture
def ckpt_copy(tmp_path) -> Path:
    dst = tmp_path / "ckpt"
    shutil.copytree(ensure_embedded_checkpoint("pi0"), dst)
    return dst


def test_a_fifo_in_place_of_config_json_is_refused_without_blocking(ckpt_copy):
    (ckpt_copy / "config.json").unlink()
    os.mkfifo(ckpt_copy / "config.json")
    with pytest.raises((CheckpointError, ConfigError), match="config"):
        load_checkpoint(ckpt_copy)


def test_a_device_symlinked_as_processor_file_is_refused(ckpt_copy):
    target = ckpt_copy / "policy_preprocessor.json"
    target.unlink()
    target.symlink_to("/dev/zero")
    with pytest.raises(CheckpointError, match="policy_preprocessor.json"):
        load_checkpoint(ckpt_copy)


def test_an_oversized_metadata_file_is_refused_before_reading(ckpt_copy):
    with open(ckpt_copy / "config.json", "r+b") as fh:
        fh.truncate(MAX_METADATA_BYTES + 1)  # sparse: no real disk use
    with pytest.raises((CheckpointError, ConfigError), match="bytes"):
        load_checkpoint(ckpt_copy)


def test_small_text_reader_names_the_problem(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        read_small_text(tmp_path / "absent.json", "config file", ConfigError)
    with pytest.raises(ConfigError, match="not a regular file"):
        read_small_text(tmp_path, "config file", ConfigError)
    empty = tmp_path / "empty.json"
    empty.touch()
    with pytest.raises(ConfigError, match="0 bytes"):
        read_small_text(empty, "config file", ConfigError)
    binary = tmp_path / "binary.json"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ConfigError, match="not UTF-8"):
        read_small_text(binary, "config file", ConfigError)


def test_tokenizer_path_parameter_pointing_at_a_fifo_is_refused(tmp_path):
    fifo = tmp_path / "tokenizer.model"
    os.mkfifo(fifo)
    with pytest.raises(TokenizerError, match="not a regular file"):
        Pi0Policy.load(PolicyConfig(str(ensure_embedded_checkpoint("pi0")),
                                    tokenizer_path=str(fifo)))


def test_checkpoint_dir_parameter_that_is_a_file_is_refused(tmp_path):
    plain = tmp_path / "model.safetensors"
    plain.write_bytes(b"\0" * 16)
    with pytest.raises(CheckpointError, match="not a directory"):
        load_checkpoint(plain)
