# SPDX-License-Identifier: Apache-2.0
"""The firefly collector (`scitagd collector`): its own process and config file section.

conf.py its config (parsed on its own, not through the daemon's); service.py receivers, relay
and life cycle; account.py joins fireflies into flows; store.py where they are kept (SQLite);
web.py the dashboard, JSON API and /metrics; importer.py archives into the store.
"""
