"""Seeing the proxy work: Prometheus metrics, the access log, health checks, the status page.

Wired only by :mod:`proxy.app`; the pull-through services and the upstream client report to it through the small
Protocols they define (:mod:`proxy.pullthrough.events`, :mod:`proxy.upstream.events`).
"""
