"""The admin application: ``admin_app(services, pipelines, admin_token)`` in ``admin_ui.app`` builds the JSON API
(/admin/v1, one module per resource) and the web UI's static slot (/admin/)."""
