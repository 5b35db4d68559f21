"""Helpers the tests share: log capture, processes, proxies, raw HTTP, the terminal client."""
