"""The private Ray code the server patches (``vitviz.server.serve.replica_grpc_on_loopback``):
a Ray version that moved it fails here, by name, before a server quietly opens a port on every
interface."""

from __future__ import annotations

import importlib
import inspect

import pytest

pytest.importorskip("ray.serve", reason="the server needs Ray Serve (requirements-serve.txt)")


def test_the_private_ray_names_the_server_patches_are_there():
    """Fails on a Ray version that moved what ``vitviz.server.serve`` patches: then find
    where that version opens the replica's gRPC port and update
    ``replica_grpc_on_loopback`` (and ``private_ray_on_loopback``)."""
    ray = pytest.importorskip("ray")
    from vitviz.server import serve

    missing = []
    for module_name, name in serve.PRIVATE_RAY:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            missing.append(f"{module_name} (no such module)")
            continue
        if not hasattr(module, name):
            missing.append(f"{module_name}.{name}")
    assert not missing, (
        f"Ray {ray.__version__} moved what vitviz.server.serve patches: {', '.join(missing)} "
        "(checked with Ray 2.60); update replica_grpc_on_loopback / private_ray_on_loopback"
    )
    module_name, name = serve.GRPC_PORT_HOOK
    hook = getattr(importlib.import_module(module_name), name)
    params = list(inspect.signature(hook).parameters)
    assert len(params) == 2, (
        f"Ray {ray.__version__}: {module_name}.{name}{inspect.signature(hook)} no longer takes "
        "(server, address) as replica_grpc_on_loopback expects"
    )


def test_the_replica_patch_moves_all_interface_addresses_to_loopback(monkeypatch):
    from vitviz.server import serve

    module_name, name = serve.GRPC_PORT_HOOK
    module = importlib.import_module(module_name)
    calls = []
    monkeypatch.setattr(module, name, lambda server, address: calls.append((server, address)))
    assert serve.replica_grpc_on_loopback() is True
    assert serve.replica_grpc_on_loopback() is True  # not wrapped twice
    patched = getattr(module, name)
    for address in ("[::]:0", "0.0.0.0:5000", "10.1.2.3:7"):
        patched("server", address)
    assert calls == [
        ("server", "127.0.0.1:0"),
        ("server", "127.0.0.1:5000"),
        ("server", "10.1.2.3:7"),
    ]
    monkeypatch.delattr(module, name)
    assert serve.replica_grpc_on_loopback() is False  # a Ray without it: left as it is
