"""Checkout-only entry points of the benchmark harness: thin wrappers (``run.py``,
``analysis.py``, ``speed.py``) around :mod:`mmnet_plugin.bench`, which the wheel installs,
and the shell scripts for a leased GPU."""
