"""The service's HTTP routes, one router per resource: ``openai`` (models and completions), ``files``,
``sessions``, ``runs`` (and their tree for the viewer) and ``health`` (health and metrics). Each route
reaches the service through ``deps``; the app factory (``service/app.py``) includes them."""
