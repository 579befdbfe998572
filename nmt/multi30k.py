"""Fetch the Multi30k task-1 raw corpus (Elliott et al., 2016) into a local folder, checked by sha256.

Files come from a local mirror folder when `NMT_DATA_MIRROR` (or `mirror=`) names one, and from the corpus's
public GitHub repository otherwise. A file already present with the right checksum is left alone; a file is
written to a temporary name and renamed only once its checksum is right, so nothing half-written remains.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import urllib.error
import urllib.request
from pathlib import Path

from nmt.errors import NMTError
from nmt.textio import atomic_write

log = logging.getLogger(__name__)

URL = "https://github.com/multi30k/dataset/raw/master/data/task1/raw/{name}"
MIRROR_ENV = "NMT_DATA_MIRROR"

SHA256 = {
    "test_2016_flickr.cs.gz": "200a4a74cc9560f051924abb9803be008d1908d77f747e9141aeb86dfd2797f1",
    "test_2016_flickr.de.gz": "9204244e408ccb38d2a55cfcd344df15005fc42a07a6e55ca6c52b6ababb8cc8",
    "test_2016_flickr.en.gz": "611d361c6334bc7246101d48097c13cf5c4413c5befc793cc629934359d532d9",
    "test_2016_flickr.fr.gz": "6d326e188d259fb1d04ac19eae3af956559b3a0b93d7635e56c90987c40c8b90",
    "test_2017_flickr.de.gz": "a2c89666db00c495cd8513b9d708d5a3acc205d7de312ef2bf5fb7ebc1540aee",
    "test_2017_flickr.en.gz": "76a444ee25172e72695cddb13ae4a3bda59430617be88e0bb46b60504f054074",
    "test_2017_flickr.fr.gz": "3ba671ceb2299f3304ffafefea7a833d08632fbaf0ba18546f8a2ec2391af496",
    "train.cs.gz": "a65adb8b32e3bc664f21ecba7a6e7f6950fd1f405e135f7c312faabdb6255077",
    "train.de.gz": "726e39b2fa9eb9ffb6dc763fb35a179f80fae06ffc5d28b6ace5faa883de28a6",
    "train.en.gz": "d79cfa999dd4c51d2cb42499b6796d5a882c3a8a961923c25a898c90f8bbd56f",
    "train.fr.gz": "622e75069e9f4c577425c4f277116ce66e63a2401c0a2312d90073cb12379a3c",
    "val.cs.gz": "b63226e05c4bd5dd6a42897d74b86a1b9d2c31498252c572b1ea7f7996927fcc",
    "val.de.gz": "f0cba2f995189cf5770f29a8a9a537a3ad3f51657ad873405082ff6863a5e75a",
    "val.en.gz": "14f7d25ddd868909a9213e361768460edcacdd6ab9d1e77b92560dc10c10dc28",
    "val.fr.gz": "ca3106f1a72390591d25f6c45cb4cd39dec4cd3f123e099748a3ce5256c160e9",
}


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _download(name: str, out) -> None:
    url = URL.format(name=name)
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            shutil.copyfileobj(response, out)
    except (urllib.error.URLError, OSError) as e:
        raise NMTError(
            f"cannot download {url} ({getattr(e, 'reason', e)}); offline, give a local copy of the corpus "
            f"with {MIRROR_ENV}=/path/to/multi30k (e.g. {MIRROR_ENV}=../shared/data/multi30k)"
        ) from None


def fetch(dest: str | Path, mirror: str | Path | None = None) -> list[Path]:
    """Place every Multi30k file in `dest` and return their paths; raise NMTError on any failure."""
    dest = Path(dest)
    mirror = mirror or os.environ.get(MIRROR_ENV) or None
    if mirror is not None and not Path(mirror).is_dir():
        raise NMTError(f"mirror {mirror}: not a folder")
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise NMTError(f"{dest}: cannot create data folder ({e.strerror})") from None
    paths = []
    for name, expected in SHA256.items():
        path = dest / name
        paths.append(path)
        if path.is_file() and sha256(path) == expected:
            continue
        source = Path(mirror) / name if mirror else URL.format(name=name)
        log.info("fetching %s from %s", name, source)
        with atomic_write(path) as tmp:  # renamed into place only when no exception ends the block
            with open(tmp, "wb") as out:
                if mirror:
                    try:
                        with open(source, "rb") as src:
                            shutil.copyfileobj(src, out)
                    except OSError as e:
                        raise NMTError(f"{source}: cannot read mirror file ({e.strerror})") from None
                else:
                    _download(name, out)
            got = sha256(tmp)
            if got != expected:
                raise NMTError(f"{source}: sha256 {got} does not match the published {expected}")
    return paths


def is_multi30k_path(prefix: str) -> bool:
    """True when a corpus prefix names a file of the Multi30k folder (so it may be fetched when missing)."""
    return (
        Path(prefix).name in {name.split(".")[0] for name in SHA256}
        and Path(prefix).parent.name == "multi30k"
    )
