"""Test suite of the registry proxy.

This file makes ``tests`` a regular package so that ``tests.harness`` imports the same way from pytest and mypy.
"""
