"""Placement (service/placement.py): ``place`` is pure (facts in, host out, ties broken the
same way every time); ``choose`` probes nothing without a libvirt host; a launch without
``--host`` goes where ``place`` says and says so, one with an option only ``local`` has
goes to ``local``."""

from __future__ import annotations

import asyncio
import platform
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Self

import pytest
from fakes import FakeDriver, FakeImages
from test_host_drivers import LV

from ketch.errors import HostUnreachable, Timeout
from ketch.host.libvirt import NodeFacts, Prober
from ketch.layout import Root
from ketch.model import BootSpec, HostSpec, ImageInfo
from ketch.progress import ListReporter
from ketch.runtime.driver import Driver
from ketch.service import launch, placement
from ketch.service.context import Context
from ketch.service.drivers import Drivers
from ketch.service.placement import Candidate, arch_name, place
from ketch.store.db import Store

GiB = 1 << 30
HERE = platform.machine()


def c(name: str, free: int | None, arch: str | None = "x86_64", **kw: str) -> Candidate:
    return Candidate(name=name, memory_free=free, arch=arch, **kw)


def test_the_most_free_memory_wins() -> None:
    got = place([c("local", 4 * GiB), c("lv", 9 * GiB), c("big", 7 * GiB)], arch="x86_64")
    assert got.host == "lv" and got.memory_free == 9 * GiB
    assert got.passed == (("local", "4.0GiB free"), ("big", "7.0GiB free"))


def test_ties_go_to_local_then_to_the_first_name() -> None:
    assert place([c("zz", 5), c("local", 5), c("aa", 5)], arch="x86_64").host == "local"
    assert place([c("zz", 5), c("local", 4), c("aa", 5)], arch="x86_64").host == "aa"
    # the order the facts come in does not matter
    assert place([c("aa", 5), c("local", 4), c("zz", 5)], arch="x86_64").host == "aa"


def test_a_host_that_did_not_answer_is_passed_over_with_its_reason() -> None:
    got = place(
        [c("local", 1), c("lv", None, unreachable="did not answer within 10 s")], arch="x86_64"
    )
    assert got.host == "local"
    assert got.passed == (("lv", "did not answer (did not answer within 10 s)"),)


def test_the_image_architecture_must_be_the_hosts() -> None:
    assert arch_name("amd64") == arch_name("x86_64") and arch_name("arm64") == "aarch64"
    got = place([c("local", 1, "x86_64"), c("pi", 9, "aarch64")], arch="amd64")
    assert got.host == "local" and got.passed == (("pi", "it is aarch64, the image is amd64"),)
    assert place([c("local", 1), c("lv", 9, None)], arch="x86_64").host == "local"


def test_a_host_whose_driver_cannot_honour_the_options_is_passed_over() -> None:
    refused = "launch --mount is not supported there yet"
    got = place([c("local", 1), c("lv", 9, refused=refused)], arch="x86_64")
    assert got.host == "local" and got.passed == (("lv", refused),)


def test_with_no_host_able_it_is_local() -> None:
    got = place([c("local", None), c("lv", None)], arch="x86_64")
    assert got.host == "local" and got.memory_free is None
    assert "no other host can take it" in got.line("web")


def test_the_progress_line_says_where_and_why() -> None:
    got = place([c("local", 2 * GiB), c("lv", 3 * GiB)], arch="x86_64")
    assert got.line("web") == (
        'Placing web on host "lv" (the most free memory, 3.0GiB); not on local: 2.0GiB free'
    )


# -- through the service, with a real store and a prober that needs no libvirt ------------


class Probes:
    def __init__(self, free: int) -> None:
        self.free, self.down = free, False
        self.opened: list[str] = []

    def __call__(self, uri: str) -> NodeFacts:
        self.opened.append(uri)
        if self.down:
            raise HostUnreachable("Failed to connect socket to '/run/libvirt/libvirt-sock'")
        return NodeFacts(
            cpus=2, memory_total=1 << 50, memory_free=self.free, disk_free=None,
            disk_pool=None, arch=HERE,
        )  # fmt: skip


class World:
    """A real store, fake drivers (``local`` and the libvirt host ``lv``'s), a fake prober."""

    def __init__(self, tmp: Path, lv: FakeDriver | None = None) -> None:
        self.root = Root(tmp / "root")
        self.root.path.mkdir(parents=True)
        self.store = Store(self.root.database)
        self.store.set_setting("local.accel", "tcg")  # never probe KVM here
        base = tmp / "base.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "64M"], check=True)
        image = ImageInfo(
            id="test:base", release="test base", disk=str(base), disk_format="qcow2",
            boot=BootSpec(kernel="/nonexistent/vmlinuz"),
        )  # fmt: skip
        self.probes = Probes(free=1 << 49)  # more than any machine here has
        self.local, self.lv = FakeDriver(), lv or FakeDriver()
        self.ctx = Context(
            self.root, self.store, self.local, FakeImages(image), boot_timeout=0.01,
            prober=Prober(self.probes),
        )  # fmt: skip
        self.ctx.drivers = Drivers(self.root, self.store, self.local, self.opener)

    def opener(self, host: HostSpec, uri: str) -> Driver:
        return self.lv

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.store.close()

    def launch(self, name: str, **kw: object) -> tuple[str, list[str]]:
        rep = ListReporter()
        req = launch.LaunchRequest(image="test", name=name, memory="256M", disk="64M", **kw)  # type: ignore[arg-type]
        with pytest.raises(Timeout):  # the fake guest never gets ready: the instance is kept
            asyncio.run(launch.launch(self.ctx, req, rep))
        return self.store.get(name).spec.host, rep.steps


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    with World(tmp_path) as w:
        yield w


def test_no_libvirt_host_no_probe_and_local(world: World) -> None:
    chosen = placement.choose(
        world.ctx, "a", mounts=False, networks=False, forwards=False, firmware=None
    )
    assert asyncio.run(chosen) is None
    host, steps = world.launch("a")
    assert host == "local" and world.probes.opened == []
    assert not any(s.startswith("Placing") for s in steps)


def test_a_launch_goes_to_the_host_with_most_free_memory_and_says_so(world: World) -> None:
    world.store.add_host(LV)
    host, steps = world.launch("a")
    assert host == "lv" and world.probes.opened == ["qemu:///system"]
    (line,) = [s for s in steps if s.startswith("Placing")]
    assert line.startswith('Placing a on host "lv" (the most free memory, ') and "local:" in line


def test_an_option_only_local_has_places_it_on_local(world: World) -> None:
    world.store.add_host(LV)
    host, steps = world.launch("a", forwards=["8080:80"])
    assert host == "local"
    assert any("lv: launch --forward is not supported there yet" in s for s in steps), steps


def test_a_host_that_does_not_answer_is_not_chosen(world: World) -> None:
    world.store.add_host(LV)
    world.probes.down = True
    host, steps = world.launch("a")
    assert host == "local"
    assert any("lv: did not answer (Failed to connect socket" in s for s in steps), steps


def test_host_forces_even_when_another_has_more(world: World) -> None:
    world.store.add_host(LV)
    host, steps = world.launch("a", host="local")
    assert host == "local" and world.probes.opened == []
    assert not any(s.startswith("Placing") for s in steps)
