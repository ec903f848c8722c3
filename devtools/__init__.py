"""Dev-only helpers shared by tests/ and bench/: ports, readiness polls, managed subprocesses.

Never imported by the dyno's packages (gateway, serving, sync, export).
"""
