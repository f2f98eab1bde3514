"""Fault injection against the real processes: workers SIGKILLed and SIGTERMed under load, Redis
and PostgreSQL stopped and started again, forward targets that hang, reset or answer slowly.

Sizes come from the environment (see :mod:`tests.chaos.harness`): ``make test`` runs the small
CI size, ``make chaos`` the full one. Each test records a one-line summary (events sent,
accepted, 503s, stored, duplicated, lost, duration) in ``tests/chaos/.results/``.
"""
