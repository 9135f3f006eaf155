"""HTTPS: the JSON API, WebSocket stream and (later) the web pages."""
