"""The mock host's and the captures' modules live in geviso.mock and geviso.capture; every
import path they had before keeps working and gives the very same objects."""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys

import pytest

import geviso
import geviso.capture
import geviso.capture.format

OLD_TO_NEW = {
    "geviso.mockhost": "geviso.mock.host",
    "geviso.mockcontrol": "geviso.mock.control",
    "geviso.journal": "geviso.mock.journal",
    "geviso.scenarios": "geviso.mock.scenarios",
    "geviso.nearmiss": "geviso.mock.nearmiss",
    "geviso.rules": "geviso.mock.rules",
    "geviso.admin": "geviso.mock.admin",
    "geviso.adminclient": "geviso.mock.adminclient",
    "geviso.proxy": "geviso.mock.proxy",
    "geviso.playback": "geviso.mock.playback",
    "geviso.pcap": "geviso.capture.pcap",
    "geviso.replay": "geviso.capture.replay",
    "geviso.refresh": "geviso.capture.refresh",
    "geviso.locust_replay": "geviso.capture.locust",
}


@pytest.mark.parametrize("old", sorted(OLD_TO_NEW))
def test_an_old_module_path_imports_the_moved_module_itself(old):
    assert importlib.import_module(old) is importlib.import_module(OLD_TO_NEW[old])


def test_the_old_paths_are_the_moved_modules_table_and_no_files():
    assert geviso._moved.MOVED == OLD_TO_NEW
    top = {info.name for info in pkgutil.iter_modules(geviso.__path__, "geviso.")}
    assert top.isdisjoint(OLD_TO_NEW)


def test_the_capture_package_gives_the_capture_formats_names():
    assert sorted(geviso.capture.__all__) == sorted(geviso.capture.format.__all__)
    for name in geviso.capture.format.__all__:
        assert getattr(geviso.capture, name) is getattr(geviso.capture.format, name)


def test_documented_old_imports_in_a_fresh_process_give_the_new_objects():
    # Old paths first, as a program written before the move imports them, then the new ones.
    code = """
import pickle
pickled = pickle.loads(b"cgeviso.scenarios\\nScenarios\\n.")  # pickled before the move
from geviso.admin import AdminServer
from geviso.mockhost import AdminClient, MockHost
from geviso.locust_replay import ReplayUser, requested
from geviso import capture, replay, rules
import geviso.pcap

from geviso.mock.admin import AdminServer as AdminServer2
from geviso.mock import AdminClient as AdminClient2
from geviso.capture.locust import ReplayUser as ReplayUser2, requested as requested2
from geviso.capture import format, pcap, replay as replay2
from geviso.mock import rules as rules2
import geviso

assert AdminServer is AdminServer2 and AdminClient is AdminClient2
assert MockHost is geviso.MockHost
assert ReplayUser is ReplayUser2 and requested is requested2
assert capture.read is format.read and replay is replay2 and rules is rules2
assert geviso.pcap is pcap and geviso.pcap.import_pcap is pcap.import_pcap
assert rules.loads('[{"code": "05"}]').rules[0].code == "05"
from geviso.mock.scenarios import Scenarios
assert pickled is Scenarios
print("same")
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stdout.strip()) == (0, "same"), done.stderr
