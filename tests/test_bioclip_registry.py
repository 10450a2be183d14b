"""Model strings: every accepted form parses to the right spec; everything else is refused."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from bioclip import ModelSpec, ModelSpecError, list_models, register, registry, resolve_spec


def test_registered_names():
    names = [spec.name for spec in list_models()]
    assert names[:2] == ["bioclip", "bioclip-2"]
    assert resolve_spec("bioclip").source == "hf-hub:imageomics/bioclip"
    assert resolve_spec("bioclip-2").source == "hf-hub:imageomics/bioclip-2"
    assert resolve_spec("BioCLIP").name == "bioclip"
    assert resolve_spec("bioclip").kind == "hf-hub"
    assert resolve_spec("bioclip").revision is None


def test_hf_hub_forms():
    spec = resolve_spec("hf-hub:someorg/some-model")
    assert (spec.name, spec.source, spec.revision, spec.kind) == (
        "hf-hub:someorg/some-model",
        "hf-hub:someorg/some-model",
        None,
        "hf-hub",
    )
    assert spec.repo_id == "someorg/some-model"
    pinned = resolve_spec("hf-hub:someorg/some-model@v1.2")
    assert pinned.source == "hf-hub:someorg/some-model" and pinned.revision == "v1.2"
    # The registered source is the registered model: one name in every manifest.
    same = resolve_spec("hf-hub:imageomics/bioclip@0123abc")
    assert same.name == "bioclip" and same.revision == "0123abc"
    assert resolve_spec("bioclip", revision="main").revision == "main"
    assert resolve_spec("hf-hub:imageomics/bioclip@abc", revision="abc").revision == "abc"


def test_local_dir_is_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = resolve_spec("local-dir:models/tiny")
    expected = os.path.join(str(tmp_path), "models", "tiny")
    assert spec.source == f"local-dir:{expected}"
    assert spec.path == expected
    assert spec.kind == "local-dir"
    assert resolve_spec(f"local-dir:{expected}").source == spec.source


def test_arch_tag_checkpoint_and_random(tmp_path, monkeypatch):
    tag = resolve_spec("ViT-B-16:openai")
    assert (tag.source, tag.pretrained, tag.kind, tag.architecture) == (
        "ViT-B-16",
        "openai",
        "pretrained-tag",
        "ViT-B-16",
    )
    assert tag.name == "ViT-B-16:openai"

    monkeypatch.chdir(tmp_path)
    for suffix in (".pt", ".pth", ".bin", ".safetensors"):
        spec = resolve_spec(f"ViT-B-32:ckpt/model{suffix}")
        assert spec.kind == "checkpoint"
        assert spec.source == "ViT-B-32"
        assert spec.pretrained == os.path.join(str(tmp_path), "ckpt", f"model{suffix}")
        assert spec.path == spec.pretrained
    absolute = resolve_spec("ViT-B-32:/data/weights.pt")
    assert absolute.pretrained == os.path.abspath("/data/weights.pt")

    rnd = resolve_spec("random:ViT-B-32")
    assert (rnd.kind, rnd.source, rnd.pretrained, rnd.architecture) == ("random", "random:ViT-B-32", None, "ViT-B-32")


@pytest.mark.parametrize(
    "text",
    [
        "ViT-B-16",  # bare architecture: never random weights silently
        "",
        "   ",
        "hf-hub:",
        "hf-hub:no-slash",
        "hf-hub:org/repo@",
        "local-dir:",
        "random:",
        "ViT-B-16:/some/folder",  # a path that is not a checkpoint file
        "/some/folder",
        "two words",
        "ViT-B-16:bad tag!",
    ],
)
def test_rejected_forms_list_the_accepted_ones(text):
    with pytest.raises(ModelSpecError) as info:
        resolve_spec(text)
    message = str(info.value)
    assert "Accepted model strings" in message
    assert "local-dir:PATH" in message and "random:ARCH" in message


def test_bare_arch_message_suggests_weights():
    with pytest.raises(ModelSpecError, match=r"ViT-B-16:TAG.*random:ViT-B-16"):
        resolve_spec("ViT-B-16")


def test_revision_only_for_hf_hub_and_must_agree():
    with pytest.raises(ModelSpecError, match="revision"):
        resolve_spec("ViT-B-16:openai", revision="abc")
    with pytest.raises(ModelSpecError, match="revision"):
        resolve_spec("local-dir:/tmp/x", revision="abc")
    with pytest.raises(ModelSpecError, match="Two different revisions"):
        resolve_spec("hf-hub:org/repo@abc", revision="def")


def test_spec_validation():
    with pytest.raises(ModelSpecError):
        ModelSpec(name="x", source="ViT-B-16")  # no weights
    with pytest.raises(ModelSpecError):
        ModelSpec(name="x", source="local-dir:relative/path")
    with pytest.raises(ModelSpecError):
        ModelSpec(name="x", source="hf-hub:org/repo", pretrained="openai")
    with pytest.raises(ModelSpecError):
        ModelSpec(name="x", source="hf-hub:org/repo", preprocess="stretch")
    with pytest.raises(ModelSpecError):
        ModelSpec(name="x", source="local-dir:/abs", revision="abc")
    assert resolve_spec(ModelSpec(name="x", source="random:RN50")).kind == "random"
    with pytest.raises(ModelSpecError):
        resolve_spec(42)  # type: ignore[arg-type]


def test_register(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    spec = ModelSpec(name="my-model", source="hf-hub:me/my-model", preprocess="crop", description="mine")
    register(spec)
    assert resolve_spec("my-model") is spec
    assert resolve_spec("hf-hub:me/my-model").name == "my-model"
    assert spec in list_models()
    with pytest.raises(ModelSpecError, match="already registered"):
        register(ModelSpec(name="my-model", source="hf-hub:me/other"))
    register(ModelSpec(name="my-model", source="hf-hub:me/other"), replace=True)
    assert resolve_spec("my-model").source == "hf-hub:me/other"
    with pytest.raises(ModelSpecError):
        register(ModelSpec(name="bad:name", source="hf-hub:me/x"))


def test_import_bioclip_is_light():
    """Parsing model strings, taxa and preprocessing configs must not import torch."""
    code = (
        "import sys, bioclip\n"
        "bioclip.resolve_spec('bioclip'); bioclip.Taxon(genus='Corvus')\n"
        "bioclip.PreprocessConfig().to_dict()\n"
        "heavy = [m for m in ('torch', 'open_clip', 'torchvision', 'numpy') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
