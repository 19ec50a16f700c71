"""Packaging promises: lean imports, the public surface, the installed package under tox."""

import os
import subprocess
import sys

import pytest

import mmnet_plugin

HEAVY = ("learn2learn", "torchmeta", "easyfsl", "gym")


def test_import_does_not_pull_frameworks():
    code = (
        "import sys, mmnet_plugin, mmnet_plugin.episodes, mmnet_plugin.data, mmnet_plugin.integrations;"
        f"print([m for m in {HEAVY!r} if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_public_surface():
    for name in mmnet_plugin.__all__:
        assert getattr(mmnet_plugin, name) is not None, name
    assert mmnet_plugin.MMNet.__module__.startswith("mmnet_plugin.models")


@pytest.mark.skipif("TOX_ENV_NAME" not in os.environ, reason="only meaningful inside tox")
def test_tox_tests_the_installed_package_not_the_source_tree():
    repo = os.environ.get("MMNET_REPO_ROOT", "")
    assert "site-packages" in mmnet_plugin.__file__, mmnet_plugin.__file__
    assert not repo or not mmnet_plugin.__file__.startswith(repo + os.sep + "mmnet_plugin")


def test_the_type_checking_block_names_every_lazy_export():
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(mmnet_plugin))
    block = next(n for n in tree.body if isinstance(n, ast.If) and getattr(n.test, "id", "") == "TYPE_CHECKING")
    names = {a.asname or a.name for n in block.body for a in n.names}
    assert names == set(mmnet_plugin._LAZY)
