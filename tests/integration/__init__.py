"""Integration tests that run the real launchers (e.g. under a local Slurm cluster).

A package so that ``python -m tests.integration.slurm_cluster`` works from the repository root
and the tests can import the cluster harness relatively.
"""
