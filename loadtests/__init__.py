"""Locust scenarios against a card host: ``locust -f loadtests``.

Locust imports every ``.py`` file here whose name does not start with ``_``: one
scenario (one weighted User class) per file, helpers in ``_scenario.py``. With no
``--host``, an embedded mock host is started (in the master when distributed).
"""
