"""HTTPS: the h11 server, WebSocket streams, routes, the sign-in API and the pages' kit.

The framework only: each capability's API and pages live in its own folder, and
appliance.registry lists which of them the HTTPS port serves.
"""
