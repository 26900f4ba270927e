"""The operator's web side: its HTTP listener (under the connection budget), the Starlette app,
the JSON API, the login brakes, the Host allow-list, the live feed's rows, the Prometheus
exposition and the page's static files. Reads what serve publishes; nothing imports web but
the commands."""
