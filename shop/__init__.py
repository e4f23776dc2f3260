"""The shop: a replicated e-commerce store (products, customers, orders) on txraft.

``shop.schema`` holds the data rules shared by the HTTP layer and the state machine,
``shop.state`` the deterministic SQLite state machine, ``shop.api`` the HTTP API,
``shop.openapi`` its OpenAPI description, ``shop.app`` the ``Application`` the node
runtime loads, and ``shop.client``/``shop.cli`` the Python client and ``shopctl``.
"""
