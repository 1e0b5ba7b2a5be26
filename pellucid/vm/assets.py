"""The guest assets in effect: resolved paths, checked to exist, with what their manifests say."""

from __future__ import annotations

import os
from dataclasses import dataclass

from ..build import cache
from ..config import Config
from ..errors import AssetError


@dataclass(frozen=True)
class Assets:
    kernel: str
    image: str
    image_size: int
    kernel_release: str
    kernel_key: str
    image_key: str


def resolve(cfg: Config) -> Assets:
    kernel = os.path.realpath(cfg.kernel_path)
    image = os.path.realpath(cfg.image_path)
    for what, path in (("kernel", kernel), ("root image", image)):
        if not os.path.isfile(path):
            raise AssetError(f"guest {what} {path} not found: build the assets with `pellucid assets build`")
    kman = cache.manifest_of(kernel)
    iman = cache.manifest_of(image)
    return Assets(kernel=kernel, image=image, image_size=os.path.getsize(image),
                  kernel_release=kman.get("release", ""), kernel_key=kman.get("key", ""),
                  image_key=iman.get("key", ""))
