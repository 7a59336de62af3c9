"""A start whose base image files are gone is refused before anything is touched.

The QEMU driver calls :func:`ketch.runtime.qcow2.require_base` first thing in
``start``: the error names the missing file and what to do, instead of QEMU's
"Could not open backing file" after the pid file and QMP socket were cleared.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ketch.errors import EXIT_FAILED, NotFound
from ketch.model import BootSpec, InstanceSpec
from ketch.runtime.qcow2 import require_base


def _spec(base: Path, kernel: Path | None, initrd: Path | None) -> InstanceSpec:
    return InstanceSpec(
        name="nb", image="tiny", image_id="ketch:tiny@1", release="tiny", cpus=1,
        memory=256 << 20, disk=64 << 20, base_disk=str(base), ssh_port=2222,
        boot=BootSpec(kernel=str(kernel) if kernel else None,
                      initrd=str(initrd) if initrd else None),
        mac="52:54:00:00:00:01", instance_id="i-1",
    )  # fmt: skip


def test_all_there_passes(tmp_path: Path) -> None:
    files = [tmp_path / n for n in ("disk.qcow2", "vmlinuz", "initrd.img")]
    for f in files:
        f.write_bytes(b"x")
    require_base(_spec(*files))
    require_base(_spec(files[0], None, None))  # firmware boot: only the disk


@pytest.mark.parametrize("gone", [0, 1, 2])
def test_a_missing_file_is_named_with_what_to_do(tmp_path: Path, gone: int) -> None:
    files = [tmp_path / n for n in ("disk.qcow2", "vmlinuz", "initrd.img")]
    for i, f in enumerate(files):
        if i != gone:
            f.write_bytes(b"x")
    with pytest.raises(NotFound) as err:
        require_base(_spec(*files))
    assert f"its base image file {files[gone]} is missing" in err.value.message
    assert "ketch:tiny@1" in err.value.message
    assert err.value.hint is not None and "doctor --fix" in err.value.hint
    assert err.value.exit_code == EXIT_FAILED
