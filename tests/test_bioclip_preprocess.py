"""Preprocessing: squash is pybioclip's transform exactly, crop is open_clip's; both pickle."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from PIL import Image

from bioclip import OPENAI_MEAN, OPENAI_STD, PreprocessConfig, make_transform


def _image(width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    # Smooth gradients plus noise: resampling differences show up, unlike in flat colours.
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 / width, y * 255 / height, (x + y) * 127 / (width + height)], axis=-1)
    noise = rng.integers(0, 60, size=(height, width, 3))
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8), "RGB")


IMAGES = [(640, 480, 0), (300, 900, 1), (224, 224, 2), (120, 90, 3)]  # wide, tall herbarium, exact, small


@pytest.mark.parametrize("width,height,seed", IMAGES)
def test_squash_is_pybioclips_transform(width, height, seed):
    from torchvision import transforms

    # pybioclip 2.1's preprocess_img for BioCLIP models.
    reference = transforms.Compose(
        [
            transforms.ToTensor(),
            transforms.Resize((224, 224), antialias=True),
            transforms.Normalize(mean=OPENAI_MEAN, std=OPENAI_STD),
        ]
    )
    image = _image(width, height, seed)
    ours = make_transform(PreprocessConfig())(image)
    expected = reference(image)
    assert ours.dtype.is_floating_point and str(ours.dtype) == "torch.float32"
    assert tuple(ours.shape) == (3, 224, 224)
    assert (ours == expected).all()


@pytest.fixture(scope="module")
def crop_pair(tiny_model_source):
    """(our crop transform for the tiny model, open_clip's own eval transform for it)."""
    import open_clip

    from bioclip import load_model

    _, _, open_clip_preprocess = open_clip.create_model_and_transforms(tiny_model_source)
    model = load_model(tiny_model_source, device="cpu", preprocess="crop")
    assert model.preprocess_config.mode == "crop"
    assert model.preprocess_config.interpolation == "bicubic"  # from the model's own config
    return model.transform, open_clip_preprocess


@pytest.mark.parametrize("width,height,seed", IMAGES)
def test_crop_is_open_clips_transform(crop_pair, width, height, seed):
    ours, open_clips = crop_pair
    image = _image(width, height, seed)
    assert (ours(image) == open_clips(image)).all()


def test_crop_and_squash_differ_on_a_tall_image():
    image = _image(300, 900, 1)
    squash = make_transform(PreprocessConfig(mode="squash"))(image)
    crop = make_transform(PreprocessConfig(mode="crop", interpolation="bicubic"))(image)
    assert not np.allclose(squash.numpy(), crop.numpy())


def test_transform_pickles_and_converts_modes():
    cfg = PreprocessConfig(size=64, mode="crop", interpolation="bicubic")
    transform = make_transform(cfg)
    clone = pickle.loads(pickle.dumps(transform))
    assert clone == transform and clone.config == cfg
    image = _image(100, 80, 5)
    assert (clone(image) == transform(image)).all()
    # Non-RGB input is converted, not rejected.
    assert tuple(transform(image.convert("L")).shape) == (3, 64, 64)
    assert tuple(transform(image.convert("RGBA")).shape) == (3, 64, 64)


def test_config_round_trip_and_validation():
    cfg = PreprocessConfig()
    assert (cfg.size, cfg.mode, cfg.interpolation) == (224, "squash", "bilinear")
    assert cfg.draft_size == (448, 448)
    d = cfg.to_dict()
    assert d == {
        "size": 224,
        "mode": "squash",
        "mean": list(OPENAI_MEAN),
        "std": list(OPENAI_STD),
        "interpolation": "bilinear",
    }
    assert PreprocessConfig.from_dict(d) == cfg
    assert PreprocessConfig.from_dict({"mode": "crop"}).mode == "crop"
    with pytest.raises(ValueError, match="resize_mode"):
        PreprocessConfig.from_dict({**d, "resize_mode": "shortest"})
    for bad in (
        {"size": 0},
        {"size": 224.0},
        {"size": True},
        {"mode": "letterbox"},
        {"interpolation": "nearest"},
        {"mean": (0.5, 0.5)},
        {"std": (0.5, 0.0, 0.5)},
        {"mean": "abc"},
    ):
        with pytest.raises(ValueError):
            PreprocessConfig(**bad)
    with pytest.raises(ValueError):
        PreprocessConfig.from_dict(["size", 224])  # type: ignore[arg-type]
